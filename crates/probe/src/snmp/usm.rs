//! USM cryptography (RFC 3414, RFC 7860, RFC 3826): passphrase-to-key localization, the
//! truncated HMACs and AES-128-CFB.

use aes::cipher::{generic_array::GenericArray, BlockEncrypt, KeyInit};
use hmac::{Hmac, Mac};
use sha2::Digest;

#[derive(Clone, Copy, PartialEq, Debug)]
pub enum AuthProto {
    Md5,
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl AuthProto {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "MD5" => Self::Md5,
            "SHA" => Self::Sha1,
            "SHA-224" => Self::Sha224,
            "SHA-256" => Self::Sha256,
            "SHA-384" => Self::Sha384,
            "SHA-512" => Self::Sha512,
            _ => return None,
        })
    }

    /// Length of msgAuthenticationParameters (RFC 3414, RFC 7860).
    pub fn mac_len(self) -> usize {
        match self {
            Self::Md5 | Self::Sha1 => 12,
            Self::Sha224 => 16,
            Self::Sha256 => 24,
            Self::Sha384 => 32,
            Self::Sha512 => 48,
        }
    }

    /// Password to localized key (RFC 3414 A.2): hash 1 MiB of the repeated passphrase,
    /// then hash(Ku ‖ engineID ‖ Ku).
    pub fn localized_key(self, pass: &[u8], engine: &[u8]) -> Vec<u8> {
        fn go<D: Digest>(pass: &[u8], engine: &[u8]) -> Vec<u8> {
            let mut d = D::new();
            let mut buf = [0u8; 64];
            let mut i = 0usize;
            for _ in 0..(1_048_576 / 64) {
                for b in buf.iter_mut() {
                    *b = pass[i % pass.len()];
                    i += 1;
                }
                d.update(buf);
            }
            let ku = d.finalize();
            let mut d = D::new();
            d.update(&ku);
            d.update(engine);
            d.update(&ku);
            d.finalize().to_vec()
        }
        match self {
            Self::Md5 => go::<md5::Md5>(pass, engine),
            Self::Sha1 => go::<sha1::Sha1>(pass, engine),
            Self::Sha224 => go::<sha2::Sha224>(pass, engine),
            Self::Sha256 => go::<sha2::Sha256>(pass, engine),
            Self::Sha384 => go::<sha2::Sha384>(pass, engine),
            Self::Sha512 => go::<sha2::Sha512>(pass, engine),
        }
    }

    pub fn mac(self, key: &[u8], msg: &[u8]) -> Vec<u8> {
        macro_rules! hm {
            ($d:ty) => {{
                let mut m = <Hmac<$d> as Mac>::new_from_slice(key).expect("any key length");
                m.update(msg);
                m.finalize().into_bytes().to_vec()
            }};
        }
        let mut full = match self {
            Self::Md5 => hm!(md5::Md5),
            Self::Sha1 => hm!(sha1::Sha1),
            Self::Sha224 => hm!(sha2::Sha224),
            Self::Sha256 => hm!(sha2::Sha256),
            Self::Sha384 => hm!(sha2::Sha384),
            Self::Sha512 => hm!(sha2::Sha512),
        };
        full.truncate(self.mac_len());
        full
    }
}

/// AES-128 in CFB-128 mode (RFC 3826), both directions.
pub fn aes_cfb(key: &[u8], iv: [u8; 16], data: &[u8], encrypt: bool) -> Vec<u8> {
    let cipher = aes::Aes128::new(GenericArray::from_slice(&key[..16]));
    let mut register = iv;
    let mut out = Vec::with_capacity(data.len());
    for chunk in data.chunks(16) {
        let mut block = GenericArray::clone_from_slice(&register);
        cipher.encrypt_block(&mut block);
        let o: Vec<u8> = chunk.iter().zip(block.iter()).map(|(a, b)| a ^ b).collect();
        let fed = if encrypt { &o[..] } else { chunk };
        register[..fed.len()].copy_from_slice(fed);
        out.extend(o);
    }
    out
}

pub fn aes_iv(boots: i64, time: i64, salt: &[u8]) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[..4].copy_from_slice(&(boots as u32).to_be_bytes());
    iv[4..8].copy_from_slice(&(time as u32).to_be_bytes());
    iv[8..].copy_from_slice(&salt[..8]);
    iv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3414_key_localization_vectors() {
        // RFC 3414 A.3.1 (MD5) and A.3.2 (SHA), password "maplesyrup".
        let engine = hex::decode("000000000000000000000002").unwrap();
        assert_eq!(
            hex::encode(AuthProto::Md5.localized_key(b"maplesyrup", &engine)),
            "526f5eed9fcce26f8964c2930787d82b"
        );
        assert_eq!(
            hex::encode(AuthProto::Sha1.localized_key(b"maplesyrup", &engine)),
            "6695febc9288e36282235fc7151f128497b38f3f"
        );
    }

    #[test]
    fn cfb_round_trips() {
        let key = [7u8; 16];
        let iv = aes_iv(3, 99, &[1; 8]);
        let data = b"a scoped PDU that is not a multiple of 16";
        let enc = aes_cfb(&key, iv, data, true);
        assert_ne!(&enc[..], &data[..]);
        assert_eq!(aes_cfb(&key, iv, &enc, false), data);
    }
}
