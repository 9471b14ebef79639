// The kernel programs live in the binary target; this empty library lets the daemon's build
// script depend on this crate so cargo rebuilds the object when it changes.
#![no_std]
