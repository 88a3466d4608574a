//! The named namespaces one testbed created, deleted together: by
//! [`OwnedNamespaces::delete_all`] (every one attempted, every error
//! reported) or, failing that, when the set is dropped — also while a
//! failing test unwinds. Owns only the namespaces it created itself.

use crate::netns::{Netns, NetnsError};

use super::TeardownError;

/// See the module docs.
#[derive(Debug)]
pub(super) struct OwnedNamespaces {
    prefix: String,
    created: Vec<String>,
}

impl OwnedNamespaces {
    /// An empty set for the testbed `prefix` (named in teardown errors).
    pub(super) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
            created: Vec::new(),
        }
    }

    /// Creates the namespace `name` and takes charge of deleting it.
    pub(super) fn create(&mut self, name: &str) -> Result<Netns, NetnsError> {
        let ns = Netns::create_named(name)?;
        self.created.push(name.to_string());
        Ok(ns)
    }

    /// Deletes every namespace of the set, attempting each one and
    /// reporting every error.
    pub(super) fn delete_all(&mut self) -> Result<(), TeardownError> {
        let errors: Vec<NetnsError> = self
            .created
            .drain(..)
            .filter_map(|name| Netns::delete_named(&name).err())
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(TeardownError {
                prefix: self.prefix.clone(),
                errors,
            })
        }
    }
}

impl Drop for OwnedNamespaces {
    fn drop(&mut self) {
        if let Err(e) = self.delete_all() {
            // Drop cannot return errors; say what is left behind.
            tracing::error!("{e}");
            eprintln!("{e}");
        }
    }
}
