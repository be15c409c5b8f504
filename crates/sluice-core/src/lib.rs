//! sluice's core: the parts every connector, destination and command share.
//!
//! Data flows one way through these modules: [`config`] → plan → executor →
//! [`source`] → [`lake`] → [`typing`] → [`destination`], with state kept in the lake.
//! Connectors and destinations live in their own crates and implement the
//! [`source::Source`] and [`destination::Destination`] traits.

pub mod audit;
pub mod config;
pub mod connection;
pub mod declared;
pub mod dedupe;
pub mod destination;
pub mod drift;
pub mod executor;
pub mod lake;
pub mod line_typer;
pub mod plan;
pub mod publish;
pub mod pushdown;
pub mod quarantine;
pub mod replace;
pub mod replay;
pub mod run;
pub mod schema;
pub mod secret;
pub mod shard;
pub mod source;
pub mod state;
pub mod test_hook;
pub mod typing;
