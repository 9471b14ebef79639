//! Gatekeeper's daemon: kernel event -> request -> notification -> decision -> grant -> journal.
//!
//! `core` is the pure state machine; `engine` owns it with the journal and the kernel maps;
//! `service` wires the tasks that feed the engine (`enrich`, `api`) through `handle`.

pub mod api;
pub mod cgroups;
pub mod cli;
pub mod config;
pub mod core;
pub mod destinations;
pub mod devices;
pub mod engine;
pub mod enrich;
pub mod events;
pub mod handle;
pub mod host_services;
pub mod journal;
pub mod launcher;
pub mod loader;
pub mod metrics;
pub mod mount_ancestors;
pub mod notify;
pub mod policy;
pub mod records;
pub mod requests;
pub mod resolver;
pub mod service;
pub mod shown;
pub mod users;
