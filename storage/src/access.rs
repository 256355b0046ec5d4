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

/// What [`crate::Command::UpdateUser`] changes; what is `None` stays as it is (applied field by
/// field, so two updates of different fields never undo each other).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserChange {
    /// A new password hash, with the new epoch that ends the user's older tokens.
    pub password: Option<(String, String)>,
    pub role: Option<Role>,
    pub collections: Option<Vec<String>>,
    /// Refused unless the user's epoch is still this one (a change made after checking the
    /// current password: a password changed meanwhile refuses it).
    pub expected_epoch: Option<String>,
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

    /// Admin users, and admin keys that never expire (one that will expire is no lasting way
    /// in).
    fn admins(&self) -> Result<(usize, usize), StoreError> {
        let users = self
            .users()?
            .iter()
            .filter(|u| u.role == Role::Admin)
            .count();
        let keys = self
            .api_keys()?
            .iter()
            .filter(|k| k.role == Role::Admin && k.expires_at_ms.is_none())
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

    pub(crate) fn apply_create_user(
        &self,
        batch: &mut Batch,
        user: &UserRecord,
    ) -> Result<Applied, StoreError> {
        if self.user(&user.name)?.is_some() {
            return Err(StoreError::UserExists(user.name.clone()));
        }
        batch.insert(keys::user(&user.name), encode(user));
        Ok(Applied {
            outcome: Outcome::UserPut(user.clone()),
            effects: Vec::new(),
        })
    }

    pub(crate) fn apply_update_user(
        &self,
        batch: &mut Batch,
        name: &str,
        change: &UserChange,
        at_ms: u64,
    ) -> Result<Applied, StoreError> {
        let mut user = self
            .user(name)?
            .ok_or_else(|| StoreError::UserNotFound(name.to_string()))?;
        if let Some(expected) = &change.expected_epoch {
            if *expected != user.epoch {
                return Err(StoreError::InvalidCommand(format!(
                    "the password of `{name}` changed meanwhile: sign in again and retry"
                )));
            }
        }
        if let Some(role) = change.role {
            if user.role == Role::Admin && role != Role::Admin {
                self.refuse_last_admin(at_ms, name)?;
            }
            user.role = role;
        }
        if let Some(c) = &change.collections {
            user.collections = c.clone();
        }
        if let Some((hash, epoch)) = &change.password {
            user.password_hash = hash.clone();
            user.epoch = epoch.clone();
        }
        user.updated_at_ms = at_ms;
        batch.insert(keys::user(name), encode(&user));
        Ok(Applied {
            outcome: Outcome::UserPut(user),
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

    /// Refuse to take away the last admin user while no lasting admin key is left either:
    /// nobody could manage the cluster any more.
    fn refuse_last_admin(&self, _at_ms: u64, name: &str) -> Result<(), StoreError> {
        let (users, keys) = self.admins()?;
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
        let key = self
            .api_key(id)?
            .ok_or_else(|| StoreError::ApiKeyNotFound(id.to_string()))?;
        if key.role == Role::Admin && key.expires_at_ms.is_none() {
            let (users, keys) = self.admins()?;
            if users == 0 && keys <= 1 {
                return Err(StoreError::InvalidCommand(format!(
                    "API key `{id}` is the last admin credential: make an admin user or another admin key first"
                )));
            }
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
    fn users_are_created_updated_field_by_field_and_deleted() {
        let s = Store::temporary().unwrap();
        let create = |i, u: UserRecord| s.apply(i, &Command::CreateUser { user: u });
        let update = |i, name: &str, change: UserChange| {
            s.apply(
                i,
                &Command::UpdateUser {
                    name: name.into(),
                    change,
                    at_ms: 10,
                },
            )
        };
        create(1, user("admin", Role::Admin, "a")).unwrap();
        create(2, user("ann", Role::Reader, "b")).unwrap();
        let e = create(3, user("ann", Role::Writer, "c")).unwrap_err();
        assert!(matches!(e, StoreError::UserExists(_)), "{e}");
        let role = |r| UserChange {
            role: Some(r),
            ..UserChange::default()
        };
        let e = update(4, "bob", role(Role::Writer)).unwrap_err();
        assert!(matches!(e, StoreError::UserNotFound(_)), "{e}");
        // field by field: a new password keeps the role an earlier change gave
        update(5, "ann", role(Role::Writer)).unwrap();
        let pw = UserChange {
            password: Some(("$argon2id$new".into(), "b2".into())),
            expected_epoch: Some("b".into()),
            ..UserChange::default()
        };
        update(6, "ann", pw.clone()).unwrap();
        let ann = s.user("ann").unwrap().unwrap();
        assert_eq!(
            (ann.role, ann.epoch.as_str(), ann.updated_at_ms),
            (Role::Writer, "b2", 10)
        );
        // the same change again: the epoch it expects is gone
        let e = update(7, "ann", pw).unwrap_err();
        assert!(e.to_string().contains("changed meanwhile"), "{e}");
        assert_eq!(s.users().unwrap().len(), 2);
        // The last admin can be neither demoted nor deleted...
        let e = update(8, "admin", role(Role::Reader)).unwrap_err();
        assert!(
            e.is_rejection() && e.to_string().contains("last admin"),
            "{e}"
        );
        let e = s
            .apply(
                9,
                &Command::DeleteUser {
                    name: "admin".into(),
                    at_ms: 2,
                },
            )
            .unwrap_err();
        assert!(e.to_string().contains("last admin"), "{e}");
        // ...until a lasting admin key exists (one that expires does not count)...
        let mut brief = key("k0", Role::Admin);
        brief.expires_at_ms = Some(1_000_000);
        s.apply(10, &Command::PutApiKey { key: brief }).unwrap();
        let delete = |i| {
            s.apply(
                i,
                &Command::DeleteUser {
                    name: "admin".into(),
                    at_ms: 2,
                },
            )
        };
        assert!(delete(11).is_err());
        s.apply(
            12,
            &Command::PutApiKey {
                key: key("k1", Role::Admin),
            },
        )
        .unwrap();
        delete(13).unwrap();
        assert!(s.user("admin").unwrap().is_none());
        // ...and that key, now the last admin credential, cannot be revoked
        let e = s
            .apply(14, &Command::RevokeApiKey { id: "k1".into() })
            .unwrap_err();
        assert!(e.to_string().contains("last admin credential"), "{e}");
        assert_eq!(s.applied_index().unwrap(), 14);
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
