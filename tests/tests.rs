//! Integration tests: each starts the real daemon in-process on 127.0.0.1:0 with
//! its own temporary directory and talks to it over real HTTP.

mod support;

mod cli;
mod crash;
mod delivery;
mod destinations;
mod hardening;
mod ingest;
mod pack;
mod properties;
mod rules;
