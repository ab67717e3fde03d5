//! What a sync did, and what it could not do: failures are typed by class
//! (`enforcer_sync_errors_total{class}`) and carry the pod they concern.

use aya::maps::MapError;

use super::{services, DataplaneError};
use crate::model::PodKey;

/// What `sync` did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct SyncReport {
    pub identities_added: usize,
    pub identities_removed: usize,
    pub entries_written: usize,
    pub entries_removed: usize,
    pub endpoints: usize,
    pub attached: Vec<String>,
    pub detached: Vec<String>,
    pub revision: u32,
    pub services: services::ServiceSync,
    /// Map entries whose removal failed (kept and retried at the next sync).
    pub delete_failures: usize,
    /// What could not be programmed; each failed part kept its previous state in force.
    pub errors: Vec<SyncError>,
}

/// Kinds of sync failure (`enforcer_sync_errors_total{class}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncErrorClass {
    /// A map is full (its size needs raising, or the cluster outgrew it).
    MapFull,
    /// Writing a map failed otherwise.
    MapWrite,
    /// Removing map entries failed (they are retried).
    MapDelete,
    /// Attaching the programs to a pod's interface failed.
    Attach,
}

impl SyncErrorClass {
    pub const ALL: [SyncErrorClass; 4] = [
        SyncErrorClass::MapFull,
        SyncErrorClass::MapWrite,
        SyncErrorClass::MapDelete,
        SyncErrorClass::Attach,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SyncErrorClass::MapFull => "map_full",
            SyncErrorClass::MapWrite => "map_write",
            SyncErrorClass::MapDelete => "map_delete",
            SyncErrorClass::Attach => "attach",
        }
    }

    /// The class of a failed map or attach operation.
    pub(super) fn of(err: &DataplaneError) -> Self {
        let full = |e: &MapError| match e {
            MapError::SyscallError(s) => matches!(
                s.io_error.raw_os_error(),
                Some(libc::E2BIG) | Some(libc::ENOSPC) | Some(libc::ENOMEM)
            ),
            _ => false,
        };
        match err {
            DataplaneError::Map { source, .. } if full(source) => SyncErrorClass::MapFull,
            DataplaneError::Attach { .. } | DataplaneError::PinLink { .. } => {
                SyncErrorClass::Attach
            }
            DataplaneError::Program { .. } => SyncErrorClass::Attach,
            _ => SyncErrorClass::MapWrite,
        }
    }
}

/// One part of a sync that failed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SyncError {
    pub class: SyncErrorClass,
    /// The pod it concerns, if one.
    pub pod: Option<String>,
    pub detail: String,
}

impl std::fmt::Display for SyncError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.pod {
            Some(pod) => write!(f, "{} ({}): {}", pod, self.class.as_str(), self.detail),
            None => write!(f, "{}: {}", self.class.as_str(), self.detail),
        }
    }
}

impl SyncReport {
    pub(super) fn fail(
        &mut self,
        class: SyncErrorClass,
        pod: Option<&PodKey>,
        err: &DataplaneError,
    ) {
        self.errors.push(SyncError {
            class,
            pod: pod.map(ToString::to_string),
            detail: clone_err(err).to_string(),
        });
    }
}

/// The error's message with its causes (the error itself is not `Clone`).
fn clone_err(err: &DataplaneError) -> anyhow::Error {
    let mut msg = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    anyhow::anyhow!(msg)
}

/// A removal of something already gone.
pub(super) fn is_not_found(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}
