//! Id newtypes. Every id is a UUID on the wire (as a string) and in PostgreSQL; the newtypes keep an agent id
//! from being passed where an execution id is expected.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! id_type {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {$(
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new time-ordered (v7) id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }

        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                Self(u)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Uuid {
                id.0
            }
        }
    )*};
}

id_type!(
    /// An enrolled agent; also the identity in its client certificate.
    AgentId,
    /// A datasource (a database reachable from one agent).
    DatasourceId,
    /// A storage (an object store).
    StorageId,
    /// A backup job.
    JobId,
    /// One execution (backup, restore or verify). A completed backup's id is its execution id.
    ExecutionId,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_strings() {
        let id = AgentId::new();
        let parsed: AgentId = id.to_string().parse().expect("parse");
        assert_eq!(id, parsed);
        assert!("not-a-uuid".parse::<ExecutionId>().is_err());
    }
}
