//! Users, API keys and the token-signing secret: the access records, kept in the state tree like
//! every other record so that the cluster replicates them through the log. Passwords and keys are
//! hashed before a command is made (apply stays deterministic): the store only ever sees hashes.

use serde::{Deserialize, Serialize};
use sled::Batch;

use crate::codec::encode;
use crate::store::{Applied, Outcome};
use crate::{keys, Store, StoreError};

/// What a principal may do. Grants ([`UserRecord::collections`]) narrow writers and readers to
/// some collections; an admin may do everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Everything: collections, users, keys, the cluster.
    Admin,
    /// Ingest, delete and search in the granted collections.
    Writer,
    /// Search and read in the granted collections.
    Reader,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Writer => "writer",
            Role::Reader => "reader",
        }
    }
}

/// A user who signs in with a password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub name: String,
    /// The argon2id PHC string of the password.
    pub password_hash: String,
    pub role: Role,
    /// Collection names or `prefix*` patterns the user is granted (`*`: all).
    pub collections: Vec<String>,
    /// Changes with every password change and every re-creation of the name: a token carries the
    /// epoch it was issued under, so older tokens stop working.
    pub epoch: String,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

/// An API key for a service. The key itself is shown once, when it is made; the store keeps the
/// SHA-256 of its secret part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// The public part of the key (also in the key itself), used to find it.
    pub id: String,
    /// What the key is for, as its maker named it.
    pub name: String,
    /// Hex SHA-256 of the key's secret part.
    pub secret_sha256: String,
    pub role: Role,
    pub collections: Vec<String>,
    /// The user (or credential) that made it.
    pub created_by: String,
    pub created_at_ms: u64,
    /// The key stops working at this time (None: never).
    pub expires_at_ms: Option<u64>,
}

/// How [`crate::Command::PutUser`] treats an existing user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PutMode {
    /// Refused when the name is taken.
    Create,
    /// Refused when the name is free.
    Replace,
}

impl Store {
    /// The secret the cluster signs its own tokens with, once made.
    pub fn signing_secret(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree().get(keys::SIGNING_SECRET)?.map(|v| v.to_vec()))
    }

    pub fn user(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        self.get_record(&keys::user(name))
    }

    pub fn users(&self) -> Result<Vec<UserRecord>, StoreError> {
        self.scan_records(keys::USER_PREFIX)
    }

    pub fn api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.get_record(&keys::api_key(id))
    }

    pub fn api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.scan_records(keys::API_KEY_PREFIX)
    }

    /// Admin users and admin keys that have not expired at `now_ms`.
    fn admins(&self, now_ms: u64) -> Result<(usize, usize), StoreError> {
        let users = self
            .users()?
            .iter()
            .filter(|u| u.role == Role::Admin)
            .count();
        let keys = self
            .api_keys()?
            .iter()
            .filter(|k| k.role == Role::Admin && k.expires_at_ms.is_none_or(|t| t > now_ms))
            .count();
        Ok((users, keys))
    }

    pub(crate) fn apply_bootstrap_access(
        &self,
        batch: &mut Batch,
        signing_secret: &[u8],
        admin: Option<&UserRecord>,
    ) -> Result<Applied, StoreError> {
        // Only the first bootstrap of a cluster counts (two nodes that each thought they were
        // first: the second is a no-op, and its admin password is never printed).
        if self.signing_secret()?.is_some() {
            return Ok(Applied {
                outcome: Outcome::AccessBootstrapped { applied: false },
                effects: Vec::new(),
            });
        }
        if signing_secret.len() < 32 {
            return Err(StoreError::InvalidCommand(
                "the signing secret must be at least 32 bytes".into(),
            ));
        }
        batch.insert(keys::SIGNING_SECRET, signing_secret);
        if let Some(admin) = admin {
            if self.users()?.is_empty() {
                batch.insert(keys::user(&admin.name), encode(admin));
            }
        }
        Ok(Applied {
            outcome: Outcome::AccessBootstrapped { applied: true },
            effects: Vec::new(),
        })
    }

    pub(crate) fn apply_put_user(
        &self,
        batch: &mut Batch,
        user: &UserRecord,
        mode: PutMode,
    ) -> Result<Applied, StoreError> {
        let existing = self.user(&user.name)?;
        match (mode, &existing) {
            (PutMode::Create, Some(_)) => return Err(StoreError::UserExists(user.name.clone())),
            (PutMode::Replace, None) => return Err(StoreError::UserNotFound(user.name.clone())),
            _ => {}
        }
        if let Some(old) = &existing {
            if old.role == Role::Admin && user.role != Role::Admin {
                self.refuse_last_admin(user.updated_at_ms, &user.name)?;
            }
        }
        batch.insert(keys::user(&user.name), encode(user));
        Ok(Applied {
            outcome: Outcome::UserPut(user.clone()),
            effects: Vec::new(),
        })
    }

    pub(crate) fn apply_delete_user(
        &self,
        batch: &mut Batch,
        name: &str,
        at_ms: u64,
    ) -> Result<Applied, StoreError> {
        let user = self
            .user(name)?
            .ok_or_else(|| StoreError::UserNotFound(name.to_string()))?;
        if user.role == Role::Admin {
            self.refuse_last_admin(at_ms, name)?;
        }
        batch.remove(keys::user(name));
        Ok(Applied {
            outcome: Outcome::UserDeleted,
            effects: Vec::new(),
        })
    }

    /// Refuse to take away the last admin user while no admin key is left either: nobody could
    /// manage the cluster any more.
    fn refuse_last_admin(&self, at_ms: u64, name: &str) -> Result<(), StoreError> {
        let (users, keys) = self.admins(at_ms)?;
        if users <= 1 && keys == 0 {
            return Err(StoreError::InvalidCommand(format!(
                "`{name}` is the last admin: make another admin user or an admin API key first"
            )));
        }
        Ok(())
    }

    pub(crate) fn apply_put_api_key(
        &self,
        batch: &mut Batch,
        key: &ApiKeyRecord,
    ) -> Result<Applied, StoreError> {
        if self.api_key(&key.id)?.is_some() {
            return Err(StoreError::InvalidCommand(format!(
                "an API key with id `{}` exists already",
                key.id
            )));
        }
        batch.insert(keys::api_key(&key.id), encode(key));
        Ok(Applied {
            outcome: Outcome::ApiKeyPut(key.clone()),
            effects: Vec::new(),
        })
    }

    pub(crate) fn apply_revoke_api_key(
        &self,
        batch: &mut Batch,
        id: &str,
    ) -> Result<Applied, StoreError> {
        if self.api_key(id)?.is_none() {
            return Err(StoreError::ApiKeyNotFound(id.to_string()));
        }
        batch.remove(keys::api_key(id));
        Ok(Applied {
            outcome: Outcome::ApiKeyRevoked,
            effects: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Command;

    fn user(name: &str, role: Role, epoch: &str) -> UserRecord {
        UserRecord {
            name: name.into(),
            password_hash: "$argon2id$stand-in".into(),
            role,
            collections: vec!["docs".into()],
            epoch: epoch.into(),
            created_at_ms: 1,
            updated_at_ms: 1,
        }
    }

    fn key(id: &str, role: Role) -> ApiKeyRecord {
        ApiKeyRecord {
            id: id.into(),
            name: "ci".into(),
            secret_sha256: "00".repeat(32),
            role,
            collections: vec!["*".into()],
            created_by: "admin".into(),
            created_at_ms: 1,
            expires_at_ms: None,
        }
    }

    #[test]
    fn bootstrap_happens_once() {
        let s = Store::temporary().unwrap();
        let first = Command::BootstrapAccess {
            signing_secret: vec![1; 32],
            admin: Some(user("admin", Role::Admin, "e1")),
        };
        let a = s.apply(1, &first).unwrap();
        assert_eq!(a.outcome, Outcome::AccessBootstrapped { applied: true });
        assert_eq!(s.signing_secret().unwrap(), Some(vec![1; 32]));
        assert_eq!(s.user("admin").unwrap().unwrap().epoch, "e1");
        // A second node's bootstrap changes nothing.
        let second = Command::BootstrapAccess {
            signing_secret: vec![2; 32],
            admin: Some(user("admin", Role::Admin, "e2")),
        };
        let b = s.apply(2, &second).unwrap();
        assert_eq!(b.outcome, Outcome::AccessBootstrapped { applied: false });
        assert_eq!(s.signing_secret().unwrap(), Some(vec![1; 32]));
        assert_eq!(s.user("admin").unwrap().unwrap().epoch, "e1");
        // A short secret is refused.
        let s2 = Store::temporary().unwrap();
        let short = Command::BootstrapAccess {
            signing_secret: vec![1; 8],
            admin: None,
        };
        assert!(s2.apply(1, &short).unwrap_err().is_rejection());
        assert_eq!(s2.applied_index().unwrap(), 1);
    }

    #[test]
    fn users_are_created_replaced_and_deleted() {
        let s = Store::temporary().unwrap();
        let put = |i, u: UserRecord, mode| s.apply(i, &Command::PutUser { user: u, mode });
        put(1, user("admin", Role::Admin, "a"), PutMode::Create).unwrap();
        put(2, user("ann", Role::Reader, "b"), PutMode::Create).unwrap();
        let e = put(3, user("ann", Role::Writer, "c"), PutMode::Create).unwrap_err();
        assert!(matches!(e, StoreError::UserExists(_)), "{e}");
        let e = put(4, user("bob", Role::Writer, "c"), PutMode::Replace).unwrap_err();
        assert!(matches!(e, StoreError::UserNotFound(_)), "{e}");
        put(5, user("ann", Role::Writer, "d"), PutMode::Replace).unwrap();
        assert_eq!(s.user("ann").unwrap().unwrap().role, Role::Writer);
        assert_eq!(s.users().unwrap().len(), 2);
        // The last admin can be neither demoted nor deleted...
        let e = put(6, user("admin", Role::Reader, "e"), PutMode::Replace).unwrap_err();
        assert!(
            e.is_rejection() && e.to_string().contains("last admin"),
            "{e}"
        );
        let e = s
            .apply(
                7,
                &Command::DeleteUser {
                    name: "admin".into(),
                    at_ms: 2,
                },
            )
            .unwrap_err();
        assert!(e.to_string().contains("last admin"), "{e}");
        // ...until an admin key exists.
        s.apply(
            8,
            &Command::PutApiKey {
                key: key("k1", Role::Admin),
            },
        )
        .unwrap();
        s.apply(
            9,
            &Command::DeleteUser {
                name: "admin".into(),
                at_ms: 2,
            },
        )
        .unwrap();
        assert!(s.user("admin").unwrap().is_none());
        assert_eq!(s.applied_index().unwrap(), 9);
    }

    #[test]
    fn keys_are_made_once_and_revoked() {
        let s = Store::temporary().unwrap();
        s.apply(
            1,
            &Command::PutApiKey {
                key: key("k1", Role::Reader),
            },
        )
        .unwrap();
        assert!(s
            .apply(
                2,
                &Command::PutApiKey {
                    key: key("k1", Role::Admin)
                }
            )
            .unwrap_err()
            .is_rejection());
        assert_eq!(s.api_key("k1").unwrap().unwrap().role, Role::Reader);
        s.apply(3, &Command::RevokeApiKey { id: "k1".into() })
            .unwrap();
        assert!(s.api_key("k1").unwrap().is_none());
        let e = s
            .apply(4, &Command::RevokeApiKey { id: "k1".into() })
            .unwrap_err();
        assert!(matches!(e, StoreError::ApiKeyNotFound(_)), "{e}");
    }
}
