//! alohook: receive Alohub call-event webhooks, keep every event, merge them into one record per
//! call, and serve them back.
#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod feed;
pub mod forward;
pub mod ingest;
pub mod metrics;
pub mod model;
pub mod report;
pub mod server;
pub mod sim;
pub mod store;
pub mod web;
