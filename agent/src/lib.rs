//! krunbox guest agent. See PROTOCOL.md for the wire contract; `main.rs` for
//! the command line and modes.

pub mod agent;
pub mod boot_config;
pub mod configure;
pub mod errno;
pub mod exec;
pub mod frame;
pub mod fs;
pub mod init;
pub mod metrics;
pub mod net;
pub mod pty;
pub mod reaper;
pub mod rpc;
pub mod server;
pub mod shutdown;
pub mod spawn;
pub mod sys;
pub mod transport;
pub mod trust;
pub mod users;
