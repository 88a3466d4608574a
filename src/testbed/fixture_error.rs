//! The errors of the agent fixtures ([`super::AgentPair`] and
//! [`super::AgentNetwork`]): one type, since both build namespaces, write
//! configs and secrets and run agents the same way. Each error says which
//! gateway and what to look at.

use super::agent_process::AgentProcessError;
use super::{TeardownError, TestbedError};
use crate::config::MIN_BOOTSTRAP_SECRET_BYTES;
use crate::secret::{SecretBytes, SecretFileError};
use crate::tls::lab_pki::LabPkiError;

/// See the module docs.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error(transparent)]
    Testbed(Box<TestbedError>),
    #[error(transparent)]
    Teardown(Box<TeardownError>),
    #[error(transparent)]
    Agent(#[from] AgentProcessError),
    #[error(transparent)]
    Secret(#[from] SecretFileError),
    #[error("cannot draw random secret bytes: {0}")]
    Random(String),
    #[error("the fixture wrote a config the agent would refuse: {0}")]
    Config(String),
    #[error("this pair has no Eve")]
    NoEve,
    #[error("lab PKI: {0}")]
    Pki(#[from] LabPkiError),
}

/// The errors of [`super::AgentPair`].
pub type AgentPairError = FixtureError;
/// The errors of [`super::AgentNetwork`].
pub type AgentNetworkError = FixtureError;

impl From<TestbedError> for FixtureError {
    fn from(e: TestbedError) -> Self {
        Self::Testbed(Box::new(e))
    }
}

impl From<TeardownError> for FixtureError {
    fn from(e: TeardownError) -> Self {
        Self::Teardown(Box::new(e))
    }
}

/// `len` bytes from the OS CSPRNG, for pool keys and bootstrap secrets.
pub(super) fn random_secret(len: usize) -> Result<SecretBytes, FixtureError> {
    SecretBytes::random(len).map_err(|e| FixtureError::Random(e.to_string()))
}

/// Refuses a bootstrap secret length the agent would refuse.
pub(super) fn check_bootstrap_bytes(len: usize) -> Result<(), FixtureError> {
    if len < MIN_BOOTSTRAP_SECRET_BYTES {
        return Err(FixtureError::Config(format!(
            "bootstrap_bytes {len} is below the minimum {MIN_BOOTSTRAP_SECRET_BYTES}"
        )));
    }
    Ok(())
}
