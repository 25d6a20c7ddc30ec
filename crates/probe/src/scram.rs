//! SCRAM client (RFC 5802 / 7677) over SHA-256 or SHA-512, without channel binding, for
//! SASL families (Kafka). PostgreSQL keeps its own SHA-256-only copy in postgres.rs.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use patchbay_crypto::SecretString;
use rand::RngCore;
use sha2::{Digest, Sha256, Sha512};

use crate::result::{ErrorClass, Failure};

#[derive(Debug, Clone, Copy)]
pub enum Hash {
    Sha256,
    Sha512,
}

impl Hash {
    fn hmac(self, key: &[u8], msg: &[u8]) -> Vec<u8> {
        // HMAC accepts keys of any length.
        match self {
            Hash::Sha256 => {
                let mut m =
                    <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
                m.update(msg);
                m.finalize().into_bytes().to_vec()
            }
            Hash::Sha512 => {
                let mut m =
                    <Hmac<Sha512> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
                m.update(msg);
                m.finalize().into_bytes().to_vec()
            }
        }
    }

    fn digest(self, b: &[u8]) -> Vec<u8> {
        match self {
            Hash::Sha256 => Sha256::digest(b).to_vec(),
            Hash::Sha512 => Sha512::digest(b).to_vec(),
        }
    }

    fn pbkdf2(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut u = self.hmac(password, &[salt, &1u32.to_be_bytes()].concat());
        let mut out = u.clone();
        for _ in 1..iterations {
            u = self.hmac(password, &u);
            for (o, x) in out.iter_mut().zip(u.iter()) {
                *o ^= x;
            }
        }
        out
    }
}

pub struct Scram {
    hash: Hash,
    password: SecretString,
    nonce: String,
    client_first_bare: String,
    auth_message: String,
    salted: Vec<u8>,
}

impl Scram {
    pub fn new(hash: Hash, user: &str, password: &SecretString) -> Self {
        let mut raw = [0u8; 18];
        rand::thread_rng().fill_bytes(&mut raw);
        Self::with_nonce(hash, user, password, B64.encode(raw))
    }

    fn with_nonce(hash: Hash, user: &str, password: &SecretString, nonce: String) -> Self {
        let user = user.replace('=', "=3D").replace(',', "=2C");
        Self {
            hash,
            password: password.clone(),
            client_first_bare: format!("n={user},r={nonce}"),
            nonce,
            auth_message: String::new(),
            salted: Vec::new(),
        }
    }

    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    pub fn client_final(&mut self, server_first: &str) -> Result<String, Failure> {
        let bad = || {
            Failure::new(
                ErrorClass::ProtocolMismatch,
                "malformed SCRAM message from the server",
            )
        };
        let mut r = None;
        let mut s = None;
        let mut i = None;
        for part in server_first.split(',') {
            match part.split_at_checked(2) {
                Some(("r=", v)) => r = Some(v),
                Some(("s=", v)) => s = Some(v),
                Some(("i=", v)) => i = v.parse::<u32>().ok(),
                _ => {}
            }
        }
        let (r, s, i) = (r.ok_or_else(bad)?, s.ok_or_else(bad)?, i.ok_or_else(bad)?);
        if !r.starts_with(&self.nonce) || i == 0 || i > 1_000_000 {
            return Err(bad());
        }
        let salt = B64.decode(s).map_err(|_| bad())?;
        self.salted = self
            .hash
            .pbkdf2(self.password.expose_secret().as_bytes(), &salt, i);
        let without_proof = format!("c=biws,r={r}");
        self.auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let client_key = self.hash.hmac(&self.salted, b"Client Key");
        let stored_key = self.hash.digest(&client_key);
        let signature = self.hash.hmac(&stored_key, self.auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature.iter())
            .map(|(a, b)| a ^ b)
            .collect();
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    pub fn verify_server(&self, server_final: &str) -> Result<(), Failure> {
        let server_key = self.hash.hmac(&self.salted, b"Server Key");
        let expected = B64.encode(self.hash.hmac(&server_key, self.auth_message.as_bytes()));
        match server_final.strip_prefix("v=") {
            Some(v) if v == expected => Ok(()),
            Some(_) => Err(Failure::new(
                ErrorClass::AuthFailed,
                "the server's SCRAM signature did not verify: it does not know this password",
            )
            .hint("something between patchbay and the server may be impersonating it")),
            None => {
                // RFC 5802 server-error values are short tokens (e=unknown-user,
                // e=invalid-proof); anything else is not echoed.
                let reason: String = server_final
                    .strip_prefix("e=")
                    .unwrap_or_default()
                    .chars()
                    .take(40)
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                let reason = if reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({reason})")
                };
                Err(Failure::new(
                    ErrorClass::AuthFailed,
                    format!("the server rejected the SCRAM login{reason}"),
                )
                .hint("check the user name and password"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scram_sha256_matches_rfc7677_example() {
        let pw = SecretString::new("pencil".to_owned());
        let mut s = Scram::with_nonce(Hash::Sha256, "user", &pw, "rOprNGfwEbeRWgbNEkqO".into());
        assert_eq!(s.client_first(), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let f = s
            .client_final("r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
            .unwrap();
        assert_eq!(f, "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
        s.verify_server("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
    }

    /// SHA-512 has no RFC example; this one was computed independently with Python's
    /// hashlib/hmac from the RFC 7677 inputs.
    #[test]
    fn scram_sha512_matches_an_independent_computation() {
        let pw = SecretString::new("pencil".to_owned());
        let mut s = Scram::with_nonce(Hash::Sha512, "user", &pw, "rOprNGfwEbeRWgbNEkqO".into());
        let f = s
            .client_final("r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
            .unwrap();
        assert_eq!(f, "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=gMGXRcevScNtxZ6/8lQYpGtnsNAc3mGcmNomv+xnoOMw+3R2xNJdMNnzMlTN8PPC6wdp6dybEmDYXYTxwnYPJQ==");
        s.verify_server("v=ZQnYEgWQMFmmsM8aQMF0nDDCy/AgCzkwk8CmMZYcMg0vSVlKDanekLtifDSeVGT4+5ZxXnJq199RVG2rR7N7Zw==")
            .unwrap();
        let e = s.verify_server("e=unknown-user").unwrap_err();
        assert_eq!(e.class, ErrorClass::AuthFailed);
        assert!(e.message.contains("unknown-user"));
    }
}
