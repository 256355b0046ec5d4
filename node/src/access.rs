//! Authentication: who a request comes from. Tokens the cluster issues (HS256, signed with the
//! replicated secret or `auth.jwt_secret`), tokens of an outside identity provider (its public
//! keys), API keys (their SHA-256 in the store), the configured admin key, and the cluster
//! secret. Sign-in checks argon2id password hashes off the async workers and limits failures per
//! user and per client address. Users and keys are records of the store, changed by commands
//! like everything else (see `shoal_storage::Command::CreateUser`).

use std::collections::HashMap;
use std::net::IpAddr;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use parking_lot::Mutex;
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use shoal_api::auth::{Credential, Credentials, Principal, Role as ApiRole};
use shoal_api::ApiError;
use shoal_storage::{ApiKeyRecord, Role, Store, UserRecord};

use crate::config::AuthConfig;
use crate::error::NodeError;

/// The issuer of the cluster's own tokens.
const ISSUER: &str = "shoal";
/// API keys read `shoal_<id>_<secret>`.
const KEY_PREFIX: &str = "shoal_";
/// Shortest password a user may have.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest password hashed (argon2 takes any length; a megabyte of password is an attack).
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Failure records kept before old ones are dropped.
const MAX_TRACKED_FAILURES: usize = 100_000;
/// Password checks at once; more sign-ins at the same time are answered 429.
const MAX_CONCURRENT_VERIFICATIONS: usize = 8;

/// Claims of the cluster's own tokens.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    iss: String,
    iat: u64,
    nbf: u64,
    exp: u64,
    /// The user's epoch when the token was issued: a new password or a re-created user ends it.
    ep: String,
}

/// Claims of an outside identity provider's token.
#[derive(Debug, Deserialize)]
struct ExternalClaims {
    sub: String,
    role: ApiRole,
    #[serde(default)]
    collections: Vec<String>,
}

/// The node's authenticator.
pub struct Access {
    config: AuthConfig,
    cluster_secret: Option<String>,
    external: Vec<(Algorithm, DecodingKey)>,
    failures: Mutex<HashMap<FailureKey, Failures>>,
    /// Password checks running at once (argon2 takes about 19 MiB and tens of ms each).
    verifying: std::sync::Arc<tokio::sync::Semaphore>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum FailureKey {
    User(String),
    /// A signed-in user confirming their password.
    Recheck(String),
    Address(IpAddr),
}

/// A client's address as the limits count it: an IPv6 host by its /64 (which one host
/// usually holds whole).
fn subnet(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    since_ms: u64,
}

fn unauthorized(msg: impl Into<String>) -> ApiError {
    ApiError::Unauthorized(msg.into())
}

pub fn api_role(r: Role) -> ApiRole {
    match r {
        Role::Admin => ApiRole::Admin,
        Role::Writer => ApiRole::Writer,
        Role::Reader => ApiRole::Reader,
    }
}

pub fn store_role(r: ApiRole) -> Role {
    match r {
        ApiRole::Admin => Role::Admin,
        ApiRole::Writer => Role::Writer,
        ApiRole::Reader => Role::Reader,
    }
}

fn parse_algorithm(name: &str) -> Result<Algorithm, NodeError> {
    let alg = match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        other => {
            return Err(NodeError::Config(format!(
                "auth.jwt_public_keys: algorithm `{other}` is not one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA"
            )))
        }
    };
    Ok(alg)
}

/// The hex SHA-256 of an API key's secret part.
pub fn key_digest(secret: &str) -> String {
    let d = Sha256::digest(secret.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random string of `n` letters and digits.
pub fn random_alnum(n: usize) -> String {
    const SET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::rngs::OsRng;
    (0..n)
        .map(|_| SET[rng.gen_range(0..SET.len())] as char)
        .collect()
}

/// A new API key: (the key as shown once, its id, the digest of its secret).
pub fn new_api_key() -> (String, String, String) {
    let id = random_alnum(12);
    let secret = random_alnum(40);
    (
        format!("{KEY_PREFIX}{id}_{secret}"),
        id,
        key_digest(&secret),
    )
}

/// The argon2id hash (PHC string) of a password. CPU-heavy (tens of ms): call it off the async
/// workers.
pub fn hash_password(password: &str) -> Result<String, NodeError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| NodeError::Internal(format!("hashing a password: {e}")))
}

/// Whether `password` matches the PHC string `hash`. CPU-heavy, as [`hash_password`].
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A password fit to be set: refused with a reason otherwise.
pub fn check_new_password(password: &str) -> Result<(), ApiError> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(ApiError::BadRequest(format!(
            "a password needs at least {MIN_PASSWORD_CHARS} characters"
        )));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(ApiError::BadRequest(format!(
            "a password may have at most {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    Ok(())
}

impl Access {
    /// Read the configured outside keys; a key that cannot be read stops the start.
    pub fn new(config: &AuthConfig, cluster_secret: Option<String>) -> Result<Access, NodeError> {
        let mut external = Vec::new();
        for k in &config.jwt_public_keys {
            let alg = parse_algorithm(&k.algorithm)?;
            let pem = std::fs::read(&k.pem_file).map_err(|e| {
                NodeError::Config(format!(
                    "auth.jwt_public_keys: cannot read {}: {e}",
                    k.pem_file.display()
                ))
            })?;
            let key = match alg {
                Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pem),
                Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
                _ => DecodingKey::from_rsa_pem(&pem),
            }
            .map_err(|e| {
                NodeError::Config(format!(
                    "auth.jwt_public_keys: {} is not a {} public key in PEM: {e}",
                    k.pem_file.display(),
                    k.algorithm
                ))
            })?;
            external.push((alg, key));
        }
        Ok(Access {
            config: config.clone(),
            cluster_secret,
            external,
            failures: Mutex::new(HashMap::new()),
            verifying: std::sync::Arc::new(tokio::sync::Semaphore::new(
                MAX_CONCURRENT_VERIFICATIONS,
            )),
        })
    }

    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    pub fn token_ttl_s(&self) -> u64 {
        self.config.token_ttl_s
    }

    /// Whether the node can issue and check its own tokens (it has a signing secret).
    pub fn can_sign(&self, store: &Store) -> bool {
        matches!(self.signing_secret(store), Ok(Some(_)))
    }

    /// The HS256 secret of the cluster's own tokens: configured, or the replicated one.
    fn signing_secret(&self, store: &Store) -> Result<Option<Vec<u8>>, ApiError> {
        if let Some(s) = &self.config.jwt_secret {
            return Ok(Some(s.0.as_bytes().to_vec()));
        }
        store
            .signing_secret()
            .map_err(|e| ApiError::Internal(format!("reading the signing secret: {e}")))
    }

    fn secret_matches(given: &str, ours: &str) -> bool {
        shoal_cluster::server::same_secret(given.as_bytes(), ours.as_bytes())
    }

    fn admin(name: &str, credential: Credential) -> Principal {
        Principal {
            name: name.to_string(),
            role: ApiRole::Admin,
            collections: vec!["*".into()],
            credential,
            cluster_admin: true,
        }
    }

    /// Who presented `creds`, at `now_ms`.
    pub fn authenticate(
        &self,
        store: &Store,
        creds: &Credentials,
        now_ms: u64,
    ) -> Result<Principal, ApiError> {
        if let Some(given) = &creds.cluster_secret {
            return match &self.cluster_secret {
                Some(ours) if Self::secret_matches(given, ours) => {
                    Ok(Self::admin("cluster-secret", Credential::ClusterSecret))
                }
                _ => Err(unauthorized(
                    "the x-shoal-cluster-secret header does not hold this cluster's secret",
                )),
            };
        }
        if !self.config.enabled {
            // Auth is off: everyone manages every collection; the cluster's admin routes still
            // need the cluster secret when the node has one.
            return Ok(Principal {
                cluster_admin: self.cluster_secret.is_none(),
                ..Self::admin("anonymous", Credential::None)
            });
        }
        if creds.malformed {
            return Err(unauthorized(
                "the Authorization header must read `Bearer <token or API key>`",
            ));
        }
        let Some(bearer) = creds.bearer.as_deref() else {
            return Err(unauthorized(
                "this route needs a credential: send `Authorization: Bearer <token or API key>` (get a token with POST /api/v1/auth/token)",
            ));
        };
        if let Some(admin_key) = &self.config.admin_key {
            if Self::secret_matches(bearer, &admin_key.0) {
                return Ok(Self::admin("admin-key", Credential::AdminKey));
            }
        }
        if let Some(rest) = bearer.strip_prefix(KEY_PREFIX) {
            return self.api_key(store, rest, now_ms);
        }
        self.token(store, bearer)
    }

    fn api_key(&self, store: &Store, rest: &str, now_ms: u64) -> Result<Principal, ApiError> {
        let invalid = || unauthorized("this API key is not valid (revoked, expired or mistyped)");
        let (id, secret) = rest.split_once('_').ok_or_else(invalid)?;
        let key: ApiKeyRecord = store
            .api_key(id)
            .map_err(|e| ApiError::Internal(format!("reading an API key: {e}")))?
            .ok_or_else(invalid)?;
        if !Self::secret_matches(&key_digest(secret), &key.secret_sha256) {
            return Err(invalid());
        }
        if key.expires_at_ms.is_some_and(|t| t <= now_ms) {
            return Err(invalid());
        }
        Ok(Principal {
            name: format!("key:{}", key.id),
            role: api_role(key.role),
            collections: key.collections,
            credential: Credential::ApiKey,
            cluster_admin: key.role == Role::Admin,
        })
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.config.leeway_s;
        v.validate_nbf = true;
        v.validate_exp = true;
        v.set_required_spec_claims(&["exp", "sub", "iss"]);
        v
    }

    fn token(&self, store: &Store, token: &str) -> Result<Principal, ApiError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| unauthorized("the bearer credential is neither a token nor an API key"))?;
        let invalid = |e: jsonwebtoken::errors::Error| {
            use jsonwebtoken::errors::ErrorKind;
            unauthorized(match e.kind() {
                ErrorKind::ExpiredSignature => "the token has expired: get a new one",
                ErrorKind::ImmatureSignature => "the token is not valid yet",
                ErrorKind::InvalidIssuer => "the token's issuer is not accepted",
                ErrorKind::InvalidAudience => "the token's audience is not accepted",
                _ => "the token is not valid (its signature, algorithm or claims do not check)",
            })
        };
        // The algorithm decides the key: HS256 is only ever checked with the cluster's own
        // secret, the public-key algorithms only with the configured public keys (so a token
        // signed with a public key as an HMAC secret checks against nothing).
        if header.alg == Algorithm::HS256 {
            let Some(secret) = self.signing_secret(store)? else {
                return Err(unauthorized(
                    "this node cannot check tokens yet (the cluster has not made its signing secret)",
                ));
            };
            let mut v = self.validation(Algorithm::HS256);
            v.set_issuer(&[ISSUER]);
            let data =
                jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(&secret), &v)
                    .map_err(invalid)?;
            let user: UserRecord = store
                .user(&data.claims.sub)
                .map_err(|e| ApiError::Internal(format!("reading a user: {e}")))?
                .ok_or_else(|| unauthorized("the token's user no longer exists"))?;
            if user.epoch != data.claims.ep {
                return Err(unauthorized(
                    "the token was revoked (the user's password changed, or the user was made again)",
                ));
            }
            return Ok(Principal {
                name: user.name,
                role: api_role(user.role),
                collections: user.collections,
                credential: Credential::Token,
                cluster_admin: user.role == Role::Admin,
            });
        }
        let keys: Vec<&DecodingKey> = self
            .external
            .iter()
            .filter(|(alg, _)| *alg == header.alg)
            .map(|(_, k)| k)
            .collect();
        if keys.is_empty() {
            return Err(unauthorized(format!(
                "tokens signed with {:?} are not accepted here",
                header.alg
            )));
        }
        let mut v = self.validation(header.alg);
        if let Some(iss) = &self.config.jwt_issuer {
            v.set_issuer(&[iss]);
        }
        match &self.config.jwt_audience {
            Some(aud) => v.set_audience(&[aud]),
            None => v.validate_aud = false,
        }
        let mut last = None;
        for key in keys {
            match jsonwebtoken::decode::<ExternalClaims>(token, key, &v) {
                Ok(data) => {
                    let c = data.claims;
                    if let Some(bad) = c
                        .collections
                        .iter()
                        .find(|g| shoal_api::auth::validate_grant(g).is_err())
                    {
                        return Err(unauthorized(format!(
                            "the token grants `{bad}`, which is not a collection name or pattern"
                        )));
                    }
                    return Ok(Principal {
                        name: c.sub,
                        role: c.role,
                        collections: c.collections,
                        credential: Credential::ExternalToken,
                        cluster_admin: c.role == ApiRole::Admin,
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last
            .map(invalid)
            .unwrap_or_else(|| unauthorized("invalid token")))
    }

    /// Begin a sign-in of `user` from `client`: refused (429) while either has failed too
    /// often lately, or while too many sign-ins are being checked at once. Otherwise the attempt
    /// counts as a failure from now on (so that attempts sent in parallel cannot all pass the
    /// check before any has failed) until [`Access::signed_in`] takes it back. The returned
    /// permit must live as long as the password check itself (move it into the blocking task:
    /// a request dropped meanwhile must not free a place while its check still runs).
    pub fn begin_sign_in(
        &self,
        user: &str,
        client: Option<IpAddr>,
        now_ms: u64,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        self.begin_check(FailureKey::User(user.to_string()), client, now_ms)
    }

    /// [`Access::begin_sign_in`] for a signed-in user who confirms their password (to change
    /// it): counted apart from sign-ins, so that failed sign-ins by someone else cannot stop the
    /// user from changing their password, while guesses with a stolen token are still limited.
    pub fn begin_recheck(
        &self,
        user: &str,
        now_ms: u64,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        self.begin_check(FailureKey::Recheck(user.to_string()), None, now_ms)
    }

    fn begin_check(
        &self,
        subject: FailureKey,
        client: Option<IpAddr>,
        now_ms: u64,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        let busy = || ApiError::TooManyRequests {
            message: "too many sign-ins are being checked at once: try again in a moment".into(),
            retry_after_s: 1,
        };
        let permit = self
            .verifying
            .clone()
            .try_acquire_owned()
            .map_err(|_| busy())?;
        let window = self.window_ms();
        let mut failures = self.failures.lock();
        let mut keys = vec![subject];
        if let Some(ip) = client {
            keys.push(FailureKey::Address(subnet(ip)));
        }
        for key in &keys {
            if let Some(f) = failures.get(key) {
                let ends = f.since_ms.saturating_add(window);
                if f.count >= self.limit(key) && ends > now_ms {
                    let what = match key {
                        FailureKey::User(_) | FailureKey::Recheck(_) => "this user",
                        FailureKey::Address(_) => "this address",
                    };
                    let wait_s = (ends - now_ms).div_ceil(1000).max(1);
                    return Err(ApiError::TooManyRequests {
                        message: format!(
                            "too many failed sign-ins for {what}: try again in {wait_s} s"
                        ),
                        retry_after_s: wait_s,
                    });
                }
            }
        }
        for key in keys {
            self.count_failure(&mut failures, key, now_ms);
        }
        Ok(permit)
    }

    /// The sign-in of `user` from `client` succeeded: its own attempt no longer counts (the
    /// failures of others stay counted, so a user's sign-ins give an attacker no fresh tries).
    pub fn signed_in(&self, user: &str, client: Option<IpAddr>) {
        self.take_back(FailureKey::User(user.to_string()), client);
    }

    /// The recheck of `user`'s password succeeded.
    pub fn rechecked(&self, user: &str) {
        self.take_back(FailureKey::Recheck(user.to_string()), None);
    }

    fn take_back(&self, subject: FailureKey, client: Option<IpAddr>) {
        let mut failures = self.failures.lock();
        let mut keys = vec![subject];
        if let Some(ip) = client {
            keys.push(FailureKey::Address(subnet(ip)));
        }
        for key in keys {
            if let Some(f) = failures.get_mut(&key) {
                f.count = f.count.saturating_sub(1);
            }
        }
    }

    fn window_ms(&self) -> u64 {
        self.config.failed_login_window_s.saturating_mul(1000)
    }

    fn limit(&self, key: &FailureKey) -> u32 {
        match key {
            FailureKey::User(_) | FailureKey::Recheck(_) => self.config.max_failed_logins,
            FailureKey::Address(_) => self.config.max_failed_logins_per_address,
        }
    }

    fn count_failure(
        &self,
        failures: &mut HashMap<FailureKey, Failures>,
        key: FailureKey,
        now_ms: u64,
    ) {
        let window = self.window_ms();
        if !failures.contains_key(&key) && failures.len() >= MAX_TRACKED_FAILURES {
            // Make room: first what has expired, then what is not locked (a lockout is never
            // lifted to make room). Full of lockouts: this key goes uncounted.
            failures.retain(|_, f| f.since_ms.saturating_add(window) > now_ms);
            if failures.len() >= MAX_TRACKED_FAILURES {
                let limits = (
                    self.config.max_failed_logins,
                    self.config.max_failed_logins_per_address,
                );
                let unlocked = failures
                    .iter()
                    .find(|(k, f)| {
                        let max = match k {
                            FailureKey::User(_) | FailureKey::Recheck(_) => limits.0,
                            FailureKey::Address(_) => limits.1,
                        };
                        f.count < max
                    })
                    .map(|(k, _)| k.clone());
                match unlocked {
                    Some(k) => {
                        failures.remove(&k);
                    }
                    None => return,
                }
            }
        }
        let f = failures.entry(key).or_insert(Failures {
            count: 0,
            since_ms: now_ms,
        });
        if f.since_ms.saturating_add(window) <= now_ms {
            *f = Failures {
                count: 0,
                since_ms: now_ms,
            };
        }
        f.count = f.count.saturating_add(1);
    }

    /// A token for `user`, valid from `now_s` for the configured time.
    pub fn issue(&self, store: &Store, user: &UserRecord, now_s: u64) -> Result<String, ApiError> {
        let secret = self.signing_secret(store)?.ok_or_else(|| {
            ApiError::NotReady(
                "the cluster has not made its signing secret yet: try again in a moment".into(),
            )
        })?;
        let claims = Claims {
            sub: user.name.clone(),
            iss: ISSUER.into(),
            iat: now_s,
            nbf: now_s,
            exp: now_s + self.config.token_ttl_s,
            ep: user.epoch.clone(),
        };
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&secret),
        )
        .map_err(|e| ApiError::Internal(format!("signing a token: {e}")))
    }
}

/// A hash to check sign-ins of unknown users against, so that they take as long as known ones
/// (the answer's timing does not tell which user names exist). CPU-heavy the first time: call
/// it off the async workers.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password(&random_alnum(24)).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(f: impl FnOnce(&mut AuthConfig)) -> Access {
        let mut c = AuthConfig {
            max_failed_logins: 3,
            max_failed_logins_per_address: 5,
            failed_login_window_s: 60,
            ..AuthConfig::default()
        };
        f(&mut c);
        Access::new(&c, Some("the-cluster-secret-123".into())).unwrap()
    }

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("correct horsE", &h));
        assert!(!verify_password("x", "not a hash"));
        assert!(check_new_password("short").is_err());
        assert!(check_new_password(&"x".repeat(2000)).is_err());
    }

    #[test]
    fn failures_lock_a_user_and_an_address_for_the_window() {
        let a = access(|_| {});
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        // attempts count as soon as they begin: three in flight at once use the three tries
        let permits: Vec<_> = (0..3)
            .map(|_| a.begin_sign_in("ann", Some(ip), 1_000).unwrap())
            .collect();
        match a.begin_sign_in("ann", None, 2_000).unwrap_err() {
            ApiError::TooManyRequests { retry_after_s, .. } => assert_eq!(retry_after_s, 59),
            e => panic!("{e}"),
        }
        drop(permits);
        // a success takes its own attempt back from the address
        drop(a.begin_sign_in("bob", Some(ip), 2_000).unwrap());
        a.signed_in("bob", Some(ip));
        // the address (3 failures now) locks at 5, whatever the name
        drop(a.begin_sign_in("carl", Some(ip), 2_000).unwrap());
        drop(a.begin_sign_in("dan", Some(ip), 2_000).unwrap());
        assert!(a.begin_sign_in("bob", Some(ip), 2_000).is_err());
        // another user elsewhere: free; an IPv6 host is one /64
        assert!(a.begin_sign_in("bob", None, 2_000).is_ok());
        let v6 = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        for i in 0..5 {
            let _permit = a
                .begin_sign_in(&format!("u{i}"), v6(&format!("2001:db8::{i}")), 2_000)
                .unwrap();
        }
        assert!(a.begin_sign_in("v", v6("2001:db8::ffff"), 2_000).is_err());
        assert!(a.begin_sign_in("v", v6("2001:db9::1"), 2_000).is_ok());
        // after the window, free again
        assert!(a.begin_sign_in("ann", Some(ip), 61_001).is_ok());
        // failed sign-ins by others do not stop a signed-in user from confirming a password,
        // and such confirmations are limited on their own
        for _ in 0..3 {
            drop(a.begin_sign_in("zoe", None, 70_000).unwrap());
        }
        assert!(a.begin_sign_in("zoe", None, 70_000).is_err());
        for _ in 0..3 {
            drop(a.begin_recheck("zoe", 70_000).unwrap());
        }
        assert!(a.begin_recheck("zoe", 70_000).is_err());
    }

    #[test]
    fn keys_and_secrets() {
        let store = Store::temporary().unwrap();
        let a =
            access(|c| c.admin_key = Some(crate::config::Secret("admin-key-0123456789".into())));
        let creds = |bearer: &str| Credentials {
            bearer: Some(bearer.into()),
            ..Credentials::default()
        };
        let p = a
            .authenticate(&store, &creds("admin-key-0123456789"), 0)
            .unwrap();
        assert_eq!(p.role, ApiRole::Admin);
        assert!(a
            .authenticate(&store, &creds("admin-key-012345678"), 0)
            .is_err());
        let (key, id, digest) = new_api_key();
        assert!(key.starts_with("shoal_"));
        store
            .apply(
                1,
                &shoal_storage::Command::PutApiKey {
                    key: ApiKeyRecord {
                        id,
                        name: "ci".into(),
                        secret_sha256: digest,
                        role: Role::Reader,
                        collections: vec!["docs".into()],
                        created_by: "admin".into(),
                        created_at_ms: 0,
                        expires_at_ms: Some(10_000),
                    },
                },
            )
            .unwrap();
        let p = a.authenticate(&store, &creds(&key), 5_000).unwrap();
        assert_eq!(p.role, ApiRole::Reader);
        assert_eq!(p.collections, vec!["docs".to_string()]);
        // expired, or one character off
        assert!(a.authenticate(&store, &creds(&key), 10_000).is_err());
        let mut wrong = key.clone();
        wrong.pop();
        wrong.push('#');
        assert!(a.authenticate(&store, &creds(&wrong), 5_000).is_err());
        // the cluster secret is an admin credential; a wrong one is refused outright
        let secret = Credentials {
            cluster_secret: Some("the-cluster-secret-123".into()),
            ..Credentials::default()
        };
        assert_eq!(
            a.authenticate(&store, &secret, 0).unwrap().credential,
            Credential::ClusterSecret
        );
        let wrong = Credentials {
            cluster_secret: Some("nope".into()),
            bearer: Some("admin-key-0123456789".into()),
            ..Credentials::default()
        };
        assert!(a.authenticate(&store, &wrong, 0).is_err());
        assert!(a.authenticate(&store, &Credentials::default(), 0).is_err());
    }
}
