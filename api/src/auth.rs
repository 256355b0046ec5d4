//! Who a request comes from ([`Principal`]) and what it may do: the one place that decides
//! access. A collection a principal is not granted reads as missing (404, the same answer as a
//! collection that does not exist), so one tenant never learns the names of another's.

use serde::{Deserialize, Serialize};

use crate::ApiError;

/// What a principal may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything: collections, users, keys, the cluster.
    Admin,
    /// Ingest, delete and search in the granted collections.
    Writer,
    /// Search and read in the granted collections.
    Reader,
}

/// How a principal proved itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Credential {
    /// A token the cluster issued to a user (`POST /api/v1/auth/token`).
    Token,
    /// A token from an outside identity provider (RS256 or EdDSA, configured public keys).
    ExternalToken,
    ApiKey,
    /// The configured admin key (`auth.admin_key`).
    AdminKey,
    /// The cluster secret (`x-shoal-cluster-secret`), as the CLI sends it.
    ClusterSecret,
    /// Auth is off (`--insecure-no-auth`): nobody signed in.
    None,
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Principal {
    /// The user's name, the key's id, or the token's subject.
    pub name: String,
    pub role: Role,
    /// Granted collections: names, `prefix*` patterns, or `*` (all). Ignored for admins.
    pub collections: Vec<String>,
    pub credential: Credential,
    /// May run the node's and the cluster's admin routes (membership, digest, backup, fault
    /// injection). Every admin may; with auth off, only a caller that gave the cluster secret
    /// (or anyone, on a node without one).
    pub cluster_admin: bool,
}

impl Principal {
    /// Whether the principal may see collection `name` at all.
    pub fn sees(&self, name: &str) -> bool {
        self.role == Role::Admin || self.collections.iter().any(|g| grant_matches(g, name))
    }

    /// Read access to a collection. One not granted is answered as not found.
    pub fn require_read(&self, collection: &str) -> Result<(), ApiError> {
        if self.sees(collection) {
            Ok(())
        } else {
            Err(hidden_collection(collection))
        }
    }

    /// Write access (ingest, delete) to a collection.
    pub fn require_write(&self, collection: &str) -> Result<(), ApiError> {
        self.require_read(collection)?;
        match self.role {
            Role::Admin | Role::Writer => Ok(()),
            Role::Reader => Err(ApiError::Forbidden(format!(
                "`{}` is a reader: changing collection `{collection}` needs the writer or admin role",
                self.name
            ))),
        }
    }

    /// The node's and the cluster's admin routes (membership, digest, backup, fault injection),
    /// for `what` (says what was refused).
    pub fn require_cluster_admin(&self, what: &str) -> Result<(), ApiError> {
        if self.cluster_admin {
            return Ok(());
        }
        if self.credential == Credential::None {
            // Auth is off, and the node has a cluster secret this request did not give.
            return Err(ApiError::Unauthorized(format!(
                "{what} needs the cluster secret in the x-shoal-cluster-secret header (shoal cluster ... sends SHOAL_CLUSTER__SECRET)"
            )));
        }
        self.require_admin(what)
    }

    /// The admin role, for `what` (says what was refused).
    pub fn require_admin(&self, what: &str) -> Result<(), ApiError> {
        match self.role {
            Role::Admin => Ok(()),
            _ => Err(ApiError::Forbidden(format!(
                "{what} needs the admin role; `{}` is a {}",
                self.name,
                match self.role {
                    Role::Writer => "writer",
                    _ => "reader",
                }
            ))),
        }
    }
}

/// The answer for a collection the caller may not see: word for word what a missing one gets.
pub fn hidden_collection(name: &str) -> ApiError {
    ApiError::NotFound(format!("collection `{name}` not found"))
}

/// `*` grants everything, `prefix*` every name that starts with prefix, anything else one name.
pub fn grant_matches(grant: &str, name: &str) -> bool {
    match grant.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => grant == name,
    }
}

/// A grant: a collection name (1 to 64 ASCII letters, digits, `_` or `-`), optionally ending in
/// `*` to grant every name with that prefix; `*` alone grants all.
pub fn validate_grant(grant: &str) -> Result<(), ApiError> {
    let base = grant.strip_suffix('*').unwrap_or(grant);
    if grant == "*" || crate::extract::is_name(base, b"") {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "invalid grant `{grant}`: use a collection name, a `prefix*` pattern or `*`"
        )))
    }
}

/// User names: 1 to 64 ASCII letters, digits, `_`, `-`, `.` or `@`.
pub fn validate_user_name(name: &str) -> Result<(), ApiError> {
    if crate::extract::is_name(name, b".@") {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "invalid user name `{name}`: use 1 to 64 ASCII letters, digits, `_`, `-`, `.` or `@`"
        )))
    }
}

/// What a request presented, for [`crate::ShoalService::authenticate`].
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// The `Authorization: Bearer` value: a token or an API key.
    pub bearer: Option<String>,
    /// The `x-shoal-cluster-secret` header.
    pub cluster_secret: Option<String>,
    /// The header `Authorization` was present but not a bearer credential.
    pub malformed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(role: Role, grants: &[&str]) -> Principal {
        Principal {
            name: "u".into(),
            role,
            collections: grants.iter().map(|s| s.to_string()).collect(),
            credential: Credential::Token,
            cluster_admin: role == Role::Admin,
        }
    }

    #[test]
    fn grants_decide_what_is_seen() {
        assert!(grant_matches("*", "anything"));
        assert!(grant_matches("acme-*", "acme-docs"));
        assert!(!grant_matches("acme-*", "acm"));
        assert!(grant_matches("docs", "docs"));
        assert!(!grant_matches("docs", "docs2"));
        let reader = p(Role::Reader, &["acme-*"]);
        assert!(reader.require_read("acme-a").is_ok());
        let e = reader.require_read("globex").unwrap_err();
        assert_eq!(e.status().as_u16(), 404);
        assert_eq!(e.to_string(), "collection `globex` not found");
        assert_eq!(reader.require_write("acme-a").unwrap_err().status(), 403);
        // not granted: 404 before 403, so a reader cannot probe names by writing
        assert_eq!(reader.require_write("globex").unwrap_err().status(), 404);
        assert!(p(Role::Writer, &["acme-a"]).require_write("acme-a").is_ok());
        assert_eq!(
            p(Role::Writer, &["*"])
                .require_admin("x")
                .unwrap_err()
                .status(),
            403
        );
        assert!(p(Role::Admin, &[]).require_read("x").is_ok());
        assert!(p(Role::Admin, &[]).require_cluster_admin("x").is_ok());
        assert_eq!(
            p(Role::Writer, &["*"])
                .require_cluster_admin("x")
                .unwrap_err()
                .status(),
            403
        );
        // auth off on a node with a cluster secret: collections yes, the cluster no
        let open = Principal {
            credential: Credential::None,
            cluster_admin: false,
            ..p(Role::Admin, &["*"])
        };
        assert!(open.require_admin("x").is_ok());
        assert_eq!(open.require_cluster_admin("x").unwrap_err().status(), 401);
    }

    #[test]
    fn grant_and_user_names() {
        for ok in ["*", "docs", "acme-*", "a_b-1*"] {
            assert!(validate_grant(ok).is_ok(), "{ok}");
        }
        for bad in ["", "**", "a/b", "a*b", &"x".repeat(65)] {
            assert!(validate_grant(bad).is_err(), "{bad}");
        }
        assert!(validate_user_name("ann.lee@acme").is_ok());
        assert!(validate_user_name("").is_err());
        assert!(validate_user_name("a b").is_err());
    }
}
