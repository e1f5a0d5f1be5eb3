//! HTTP plumbing shared by both proxies.

pub mod body;
pub mod framing;
pub mod headers;
pub mod park;
pub mod proxy;
pub mod response;
pub mod server;
