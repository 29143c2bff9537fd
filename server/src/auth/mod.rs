//! Authentication and authorization: who is calling, and what they may do.
//!
//! [`principals`] reads `[auth]` and indexes it by credential; [`glob`] matches the jobs a
//! principal may use; [`token`] hashes and makes bearer tokens; [`layer`] is the one tower
//! layer every call passes, which answers UNAUTHENTICATED / PERMISSION_DENIED itself and
//! hands the services an [`Access`] to check the jobs a message names.

pub mod glob;
pub mod layer;
pub mod principals;
pub mod token;

pub use layer::{Access, Auth, AuthLayer};
pub use principals::{AuthConfig, Principals, Role};
