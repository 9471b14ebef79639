//! Gatekeeper's daemon: kernel event -> request -> notification -> decision -> grant -> journal.

pub mod api;
pub mod cgroups;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod destinations;
pub mod events;
pub mod journal;
pub mod loader;
pub mod notify;
pub mod requests;
