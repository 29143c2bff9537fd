//! Authentication and authorization: who is calling, and what they may do.
//!
//! [`principals`] reads `[auth]` and indexes it by credential; [`glob`] matches the jobs a
//! principal may use; [`token`] hashes and makes bearer tokens; [`layer`] is the one tower
//! layer every call passes, which answers UNAUTHENTICATED / PERMISSION_DENIED itself and
//! hands the services an [`Access`] to check the jobs a message names.

pub(crate) mod glob;
pub(crate) mod layer;
pub(crate) mod principals;
pub(crate) mod token;

pub(crate) use layer::{Access, Auth};
pub(crate) use principals::Principals;
