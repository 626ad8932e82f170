//! Why the cluster could not do something, by cause. Each says what an operator needs to act
//! on it; none carries a credential (the NATS user, password, token and credentials file never
//! reach a message).

/// A failure of the cluster's connection to NATS or of what it keeps there.
#[derive(Debug)]
pub enum ClusterError {
    /// `cluster.nats` holds an address the NATS client cannot read.
    BadAddress(String),
    /// The NATS client's own runtime could not start.
    Runtime(std::io::Error),
    /// No configured NATS server took the connection.
    Unreachable { servers: String, reason: String },
    /// NATS did not answer within `DEADLINE`.
    TimedOut,
    /// A request reached NATS and failed there, or on its way.
    Request(String),
    /// A stream or KV bucket could not be created or opened (`what` names it).
    Unavailable { what: String, reason: String },
}

impl ClusterError {
    /// A failed NATS or JetStream request.
    pub(crate) fn request(e: impl std::fmt::Display) -> ClusterError {
        ClusterError::Request(e.to_string())
    }
}

impl std::fmt::Display for ClusterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClusterError::BadAddress(e) => write!(f, "cluster.nats: {e}"),
            ClusterError::Runtime(e) => write!(f, "cannot start the NATS runtime: {e}"),
            ClusterError::Unreachable { servers, reason } => {
                write!(
                    f,
                    "cannot connect to NATS at {servers} (cluster.nats): {reason}"
                )
            }
            ClusterError::TimedOut => f.write_str("NATS did not answer in time"),
            ClusterError::Request(e) => write!(f, "NATS request failed: {e}"),
            ClusterError::Unavailable { what, reason } => write!(f, "{what}: {reason}"),
        }
    }
}

impl std::error::Error for ClusterError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClusterError::Runtime(e) => Some(e),
            _ => None,
        }
    }
}
