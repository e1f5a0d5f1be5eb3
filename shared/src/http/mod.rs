//! HTTP plumbing shared by both proxies.

pub mod headers;
pub mod response;
pub mod server;
