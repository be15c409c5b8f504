//! The formats of encrypted values. Both are bound to the column they were encrypted
//! from: the associated data is `<version prefix><key id>:<table.column>`, so a value
//! copied to another column, relabelled with another key id or version, or altered
//! does not open.
//!
//! - `enc:v3:<key id>:<base64url(iv ‖ ciphertext ‖ tag)>`, written today:
//!   AES_256_CBC_HMAC_SHA_512 (RFC 7518 §5.2), an AEAD made of AES-256-CBC and
//!   HMAC-SHA-512. Those are the two primitives PostgreSQL's pgcrypto has, so a model
//!   running in the warehouse encrypts and decrypts the very same values (see
//!   `pushdown::objects`).
//! - `enc:v2:<key id>:<base64url(nonce ‖ ciphertext ‖ tag)>`: AES-256-GCM, written by
//!   earlier versions and still read here. pgcrypto has no GCM, so in the warehouse a
//!   v2 value reads as unreadable (NULL).

use std::collections::BTreeMap;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use hmac::{Hmac, Mac};
use sha2::Sha512;

/// Prefix of the values written today.
pub(crate) const V3: &str = "enc:v3:";
/// Prefix of AES-256-GCM values written by earlier versions (read only).
const V2: &str = "enc:v2:";
/// HKDF label prefixes of the two keys of a key id (followed by the id).
const GCM_LABEL: &str = "sluice/pii/encrypt/aes-256-gcm/";
const CBC_HMAC_LABEL: &str = "sluice/pii/encrypt/aes-256-cbc-hmac-sha-512/";
/// RFC 7518 sizes for AES_256_CBC_HMAC_SHA_512: IV, tag (HMAC-SHA-512 cut to 32 bytes).
const IV_BYTES: usize = 16;
const TAG_BYTES: usize = 32;

type Aes256CbcEncryptor = cbc::Encryptor<aes::Aes256>;
type Aes256CbcDecryptor = cbc::Decryptor<aes::Aes256>;

/// The keys of one key id, each derived from its material under a label of its own.
#[derive(Clone)]
pub(crate) struct CipherKey {
    /// AES-256-GCM, for `enc:v2:` values.
    gcm: [u8; 32],
    /// `MAC_KEY ‖ ENC_KEY` of AES_256_CBC_HMAC_SHA_512, for `enc:v3:` values.
    cbc_hmac: [u8; 64],
}

impl CipherKey {
    pub(super) fn derive(material: &[u8], key_id: &str) -> CipherKey {
        let mut cbc_hmac = [0u8; 64];
        super::hkdf(
            material,
            &format!("{CBC_HMAC_LABEL}{key_id}"),
            &mut cbc_hmac,
        );
        let mut gcm = [0u8; 32];
        super::hkdf(material, &format!("{GCM_LABEL}{key_id}"), &mut gcm);
        CipherKey { gcm, cbc_hmac }
    }

    /// The HMAC-SHA-512 key of `enc:v3:` values. Secret.
    pub(crate) fn mac_key(&self) -> &[u8] {
        &self.cbc_hmac[..32]
    }

    /// The AES-256-CBC key of `enc:v3:` values. Secret.
    pub(crate) fn aes_key(&self) -> &[u8] {
        &self.cbc_hmac[32..]
    }

    #[cfg(test)]
    pub(super) fn bytes(&self) -> [&[u8]; 2] {
        [&self.gcm, &self.cbc_hmac]
    }
}

/// `value` as an `enc:v3:` value of `key_id`, bound to `context` (`table.column`).
pub(super) fn encrypt(key: &CipherKey, key_id: &str, value: &str, context: &str) -> String {
    let iv: [u8; IV_BYTES] = rand::random();
    let aad = associated_data(V3, key_id, context);
    let sealed = seal(&key.cbc_hmac, &iv, value.as_bytes(), aad.as_bytes());
    format!("{V3}{key_id}:{}", URL_SAFE_NO_PAD.encode(sealed))
}

/// The clear text of an `enc:v3:` or `enc:v2:` value of `context`; `None` if its key id
/// is not in `keys`, or it was altered or encrypted from another column.
pub(super) fn decrypt(
    keys: &BTreeMap<String, CipherKey>,
    value: &str,
    context: &str,
) -> Option<String> {
    let (version, rest) = match value.strip_prefix(V3) {
        Some(rest) => (V3, rest),
        None => (V2, value.strip_prefix(V2)?),
    };
    let (id, data) = rest.split_once(':')?;
    let key = keys.get(id)?;
    let bytes = URL_SAFE_NO_PAD.decode(data).ok()?;
    let aad = associated_data(version, id, context);
    let clear = if version == V3 {
        open(&key.cbc_hmac, &bytes, aad.as_bytes())?
    } else {
        open_gcm(&key.gcm, &bytes, aad.as_bytes())?
    };
    String::from_utf8(clear).ok()
}

/// What a ciphertext is bound to: format version, key id and the column it came from.
pub(crate) fn associated_data(version: &str, key_id: &str, context: &str) -> String {
    format!("{version}{key_id}:{context}")
}

/// RFC 7518 §5.2.2.1: `E = AES-256-CBC(ENC_KEY, IV, P)` with PKCS #7 padding,
/// `T = HMAC-SHA-512(MAC_KEY, A ‖ IV ‖ E ‖ AL)` cut to 32 bytes; returns `IV ‖ E ‖ T`.
fn seal(key: &[u8; 64], iv: &[u8; IV_BYTES], plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let (mac_key, enc_key) = key.split_at(32);
    let encrypted = Aes256CbcEncryptor::new_from_slices(enc_key, iv)
        .expect("32-byte key, 16-byte IV")
        .encrypt_padded_vec_mut::<Pkcs7>(plaintext);
    let tag = mac(mac_key, aad, iv, &encrypted).finalize().into_bytes();
    [&iv[..], &encrypted, &tag[..TAG_BYTES]].concat()
}

/// The inverse of [`seal`]: the tag is checked (in constant time) before decrypting.
fn open(key: &[u8; 64], sealed: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
    let body = sealed.len().checked_sub(IV_BYTES + TAG_BYTES)?;
    if body == 0 || body % 16 != 0 {
        return None;
    }
    let (mac_key, enc_key) = key.split_at(32);
    let (iv, rest) = sealed.split_at(IV_BYTES);
    let (encrypted, tag) = rest.split_at(body);
    mac(mac_key, aad, iv, encrypted)
        .verify_truncated_left(tag)
        .ok()?;
    Aes256CbcDecryptor::new_from_slices(enc_key, iv)
        .ok()?
        .decrypt_padded_vec_mut::<Pkcs7>(encrypted)
        .ok()
}

/// HMAC-SHA-512 over `A ‖ IV ‖ E ‖ AL`, AL being A's length in bits (64-bit big-endian).
fn mac(mac_key: &[u8], aad: &[u8], iv: &[u8], encrypted: &[u8]) -> Hmac<Sha512> {
    let mut mac =
        <Hmac<Sha512> as Mac>::new_from_slice(mac_key).expect("HMAC takes any key length");
    mac.update(aad);
    mac.update(iv);
    mac.update(encrypted);
    mac.update(&(aad.len() as u64 * 8).to_be_bytes());
    mac
}

fn open_gcm(key: &[u8; 32], sealed: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < 12 {
        return None;
    }
    let (nonce, ciphertext) = sealed.split_at(12);
    Aes256Gcm::new_from_slice(key)
        .ok()?
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7518 Appendix B.3, the AES_256_CBC_HMAC_SHA_512 test case.
    #[test]
    fn sealing_matches_the_rfc_7518_test_vector() {
        let key: [u8; 64] = std::array::from_fn(|i| i as u8);
        let iv: [u8; 16] = hex::decode("1af38c2dc2b96ffdd86694092341bc04")
            .unwrap()
            .try_into()
            .unwrap();
        let plaintext = b"A cipher system must not be required to be secret, and it must be able to fall into the hands of the enemy without inconvenience";
        let aad = b"The second principle of Auguste Kerckhoffs";
        let expected = hex::decode(concat!(
            "1af38c2dc2b96ffdd86694092341bc04",
            "4affaaadb78c31c5da4b1b590d10ffbd3dd8d5d302423526912da037ecbcc7bd",
            "822c301dd67c373bccb584ad3e9279c2e6d12a1374b77f077553df829410446b",
            "36ebd97066296ae6427ea75c2e0846a11a09ccf5370dc80bfecbad28c73f09b3",
            "a3b75e662a2594410ae496b2e2e6609e31e6e02cc837f053d21f37ff4f51950b",
            "be2638d09dd7a4930930806d0703b1f6",
            "4dd3b4c088a7f45c216839645b2012bf2e6269a8c56a816dbc1b267761955bc5",
        ))
        .unwrap();
        let sealed = seal(&key, &iv, plaintext, aad);
        assert_eq!(hex::encode(&sealed), hex::encode(&expected));
        assert_eq!(open(&key, &sealed, aad).as_deref(), Some(&plaintext[..]));
        // One flipped bit anywhere, or other associated data: refused.
        for at in [0, 20, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[at] ^= 1;
            assert_eq!(open(&key, &bad, aad), None, "bit flipped at {at}");
        }
        assert_eq!(open(&key, &sealed, b"The first principle"), None);
        assert_eq!(open(&key, &sealed[..40], aad), None);
    }
}
