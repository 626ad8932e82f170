//! Users: who logs in to obtain tokens. Names are local (`user`) or carry one of the
//! configured hosts (`user@host`, as ejabberd's clients send them); passwords are argon2id
//! hashes, checked in the same time whether or not the user exists.

use super::{Page, ServiceError, ServiceResult, TokenService};
use crate::clock::now_secs;
use crate::kv::{Bucket, KvError};
use crate::model::User;
use crate::secrets;

/// User names: letters, digits, `.`, `_`, `-`; no `@`, `/`, `+`, `#` (they would break
/// `user@host` and topic placeholders).
pub fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl TokenService {
    /// `user` or `user@host` (host one of the configured hosts) → `user`.
    pub fn local_user<'a>(&self, name: &'a str) -> Option<&'a str> {
        let user = match name.split_once('@') {
            Some((u, host)) => {
                if !self.config.hosts.iter().any(|h| h == host) {
                    return None;
                }
                u
            }
            None => name,
        };
        valid_user_name(user).then_some(user)
    }

    pub fn add_user(&self, name: &str, password: &str) -> ServiceResult<()> {
        self.add_user_as(name, password, false)
    }

    /// Adds a user; `admin` makes it an operator who may sign in to the console.
    pub fn add_user_as(&self, name: &str, password: &str, admin: bool) -> ServiceResult<()> {
        if !valid_user_name(name) {
            return Err(ServiceError::InvalidUserName(name.to_string()));
        }
        if password.is_empty() {
            return Err(ServiceError::EmptyPassword);
        }
        let user = User {
            name: name.to_string(),
            password_hash: secrets::hash_password(password),
            created_at: now_secs(),
            admin,
        };
        match self.create(Bucket::Users, name, &user, None) {
            Err(KvError::Conflict) => Err(ServiceError::UserExists(name.to_string())),
            r => r.map(|_| ()).map_err(Into::into),
        }
    }

    /// Changes a password; every token of the user is revoked.
    pub fn set_password(&self, name: &str, password: &str) -> ServiceResult<usize> {
        if password.is_empty() {
            return Err(ServiceError::EmptyPassword);
        }
        let Some((mut user, rev)) = self.get::<User>(Bucket::Users, name)? else {
            return Err(ServiceError::UnknownUser(name.to_string()));
        };
        user.password_hash = secrets::hash_password(password);
        self.update(Bucket::Users, name, &user, None, rev)?;
        self.revoke_user(name)
    }

    /// Deletes a user and revokes every token of theirs.
    pub fn delete_user(&self, name: &str) -> ServiceResult<usize> {
        if !self.store.delete(Bucket::Users, name, None)? {
            return Err(ServiceError::UnknownUser(name.to_string()));
        }
        self.revoke_user(name)
    }

    /// Every user: name, creation time (seconds since the epoch), whether an operator.
    /// Users in name order, one page: `page.after` is the last name of the page before.
    pub fn list_users(&self, page: &Page) -> ServiceResult<Vec<(String, u64, bool)>> {
        Ok(self
            .scan_page::<User>(Bucket::Users, page.after.as_deref(), page.limit, |_| true)?
            .into_iter()
            .map(|(_, u)| (u.name, u.created_at, u.admin))
            .collect())
    }

    /// Whether `name` is an operator (`--admin`).
    pub fn is_admin(&self, name: &str) -> ServiceResult<bool> {
        Ok(self
            .get::<User>(Bucket::Users, name)?
            .is_some_and(|(u, _)| u.admin))
    }

    pub fn user_exists(&self, name: &str) -> ServiceResult<bool> {
        Ok(self.store.get(Bucket::Users, name)?.is_some())
    }

    /// Checks a password in the same time whether or not the user exists.
    pub fn check_password(&self, name: &str, password: &str) -> ServiceResult<bool> {
        let user = self.get::<User>(Bucket::Users, name)?;
        let hash = user
            .as_ref()
            .map_or(secrets::dummy_hash(), |(u, _)| u.password_hash.as_str());
        let ok = secrets::verify_password(password, hash);
        Ok(ok && user.is_some())
    }

    /// A login from a form: `username` (`user` or `user@host`) and password. Returns the local
    /// user if they match; takes as long for a malformed or unknown name as for a wrong password.
    pub fn check_login(
        &self,
        username: Option<&str>,
        password: &str,
    ) -> ServiceResult<Option<String>> {
        let user = username.and_then(|u| self.local_user(u)).unwrap_or("");
        // An empty name matches no user, so the dummy hash is verified instead.
        let ok = self.check_password(user, password)?;
        Ok(ok.then(|| user.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::service;
    use super::*;

    #[test]
    fn users_and_passwords() {
        let (_d, s) = service();
        s.add_user("alice", "pw").unwrap();
        assert!(matches!(
            s.add_user("alice", "x"),
            Err(ServiceError::UserExists(_))
        ));
        assert!(matches!(
            s.add_user("a/b", "x"),
            Err(ServiceError::InvalidUserName(_))
        ));
        assert!(s.check_password("alice", "pw").unwrap());
        assert!(!s.check_password("alice", "nope").unwrap());
        assert!(!s.check_password("nobody", "pw").unwrap());
        assert_eq!(s.local_user("alice@localhost"), Some("alice"));
        assert_eq!(s.local_user("alice@elsewhere"), None);
    }
}
