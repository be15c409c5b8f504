//! The format of an encrypted lake object: AES-256-GCM envelope encryption.
//!
//! Every object has its own random 256-bit *data key*. The object is
//!
//! ```text
//! "SLUICE\x01E" (8) | key id (16, random) | chunk 0 | chunk 1 | … | chunk n-1
//! chunk i = AES-256-GCM(data key, nonce = i as u64 BE ‖ 0 0 0 ‖ last?1:0,
//!                       aad = the 24-byte header, 64 KiB of plaintext) ‖ tag (16)
//! ```
//!
//! Fixed-size chunks make a range read decrypt only the chunks it covers, and the
//! plaintext size follows from the ciphertext size alone ([`plain_len`]), so listings
//! need no extra reads. The chunk index in the nonce stops chunks being reordered;
//! the `last` flag stops an object being cut at a chunk boundary. Nonces repeat
//! across objects, never under one key: each data key seals one object only.
//!
//! The data key is *wrapped* (AES-256-GCM) by a key derived from the master key and
//! kept in a small sidecar object beside the data, `<object>.<key id>.dek`, with the
//! object's lake path as associated data: a data object moved or swapped with its
//! sidecar onto another path fails to open. Keeping the wrapped key outside the
//! data is what lets a master-key rotation re-wrap every data key (76 bytes each)
//! without rewriting any data; the key id in the sidecar's name keeps two writers
//! racing to create the same object (create-only state writes) from overwriting
//! each other's key.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use hkdf::Hkdf;
use rand::RngCore;
use sha2::Sha256;

/// First bytes of every encrypted data object.
pub const DATA_MAGIC: &[u8; 8] = b"SLUICE\x01E";
/// First bytes of every wrapped data key (sidecar).
const KEY_MAGIC: &[u8; 8] = b"SLUICE\x01K";
pub const KEY_ID_LEN: usize = 16;
/// Magic and key id.
pub const HEADER_LEN: u64 = 8 + KEY_ID_LEN as u64;
/// Plaintext bytes per chunk. 64 KiB: a Parquet range read (often a few KiB to a few
/// MiB) decrypts at most one chunk it does not need at each end, and the 16-byte tag
/// per chunk costs 0.02 % of space.
pub const CHUNK_LEN: u64 = 64 * 1024;
const TAG_LEN: u64 = 16;
pub const SEALED_CHUNK_LEN: u64 = CHUNK_LEN + TAG_LEN;
/// Sidecars end in this suffix and are hidden from listings.
pub const KEY_SUFFIX: &str = ".dek";
/// Bytes of a master key id (shown as hex): names the key without revealing it.
const MASTER_ID_LEN: usize = 8;
const SIDECAR_LEN: usize = 8 + MASTER_ID_LEN + 12 + 32 + TAG_LEN as usize;
/// At least this many bytes of master key material.
pub const MIN_MASTER_KEY_BYTES: usize = 32;

/// A master key (from a file, a variable or a command), ready to wrap data keys.
#[derive(Clone)]
pub struct MasterKey {
    id: [u8; MASTER_ID_LEN],
    wrapping: Aes256Gcm,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({})", self.id())
    }
}

impl MasterKey {
    /// Derives the wrapping key and the public key id from `material` (32+ bytes,
    /// see [`crate::secret::key_bytes`]) with HKDF-SHA-256 under distinct labels.
    pub fn from_material(material: &[u8]) -> Result<MasterKey, String> {
        if material.len() < MIN_MASTER_KEY_BYTES {
            return Err(format!(
                "the lake master key is {} bytes; at least {MIN_MASTER_KEY_BYTES} are required (generate one with `openssl rand -hex 32`)",
                material.len()
            ));
        }
        let hkdf = Hkdf::<Sha256>::new(Some(b"sluice lake"), material);
        let mut wrapping = [0u8; 32];
        hkdf.expand(b"sluice/lake/wrap-data-keys/v1", &mut wrapping)
            .expect("32 bytes is a valid HKDF-SHA-256 output length");
        let mut id = [0u8; MASTER_ID_LEN];
        hkdf.expand(b"sluice/lake/master-key-id/v1", &mut id)
            .expect("8 bytes is a valid HKDF-SHA-256 output length");
        Ok(MasterKey {
            id,
            wrapping: Aes256Gcm::new(&wrapping.into()),
        })
    }

    /// The key's public id (hex), named in errors and in the lake's marker.
    pub fn id(&self) -> String {
        hex(&self.id)
    }

    /// Wraps `data_key` for the object at `path` (lake-relative).
    pub fn wrap(&self, data_key: &DataKey, path: &str) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let mut sealed = data_key.secret.to_vec();
        let tag = self
            .wrapping
            .encrypt_in_place_detached(
                Nonce::from_slice(&nonce),
                &wrap_aad(path, &data_key.id),
                &mut sealed,
            )
            .expect("AES-GCM seals 32 bytes");
        let mut out = Vec::with_capacity(SIDECAR_LEN);
        out.extend_from_slice(KEY_MAGIC);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out.extend_from_slice(&tag);
        out
    }

    /// Unwraps the data key of the object at `path` from its sidecar bytes.
    pub fn unwrap(
        &self,
        sidecar: &[u8],
        path: &str,
        key_id: &[u8; KEY_ID_LEN],
    ) -> Result<DataKey, String> {
        let wrapped_by = sidecar_master_id(sidecar)?;
        if wrapped_by != self.id() {
            return Err(format!(
                "its data key is wrapped under master key {wrapped_by}, not the configured key {}",
                self.id()
            ));
        }
        let body = &sidecar[8 + MASTER_ID_LEN..];
        let (nonce, rest) = body.split_at(12);
        let (sealed, tag) = rest.split_at(32);
        let mut secret = [0u8; 32];
        secret.copy_from_slice(sealed);
        self.wrapping
            .decrypt_in_place_detached(
                Nonce::from_slice(nonce),
                &wrap_aad(path, key_id),
                &mut secret,
                Tag::from_slice(tag),
            )
            .map_err(|_| {
                "its data key does not authenticate for this path (the key object was altered or belongs to another object)"
                    .to_string()
            })?;
        Ok(DataKey::from_parts(*key_id, secret))
    }
}

/// The id of the master key a sidecar is wrapped under.
pub fn sidecar_master_id(sidecar: &[u8]) -> Result<String, String> {
    if sidecar.len() != SIDECAR_LEN || &sidecar[..8] != KEY_MAGIC {
        return Err(format!(
            "its data key object is not a sluice wrapped key ({} bytes)",
            sidecar.len()
        ));
    }
    Ok(hex(&sidecar[8..8 + MASTER_ID_LEN]))
}

fn wrap_aad(path: &str, key_id: &[u8; KEY_ID_LEN]) -> Vec<u8> {
    let mut aad = b"sluice lake data key v1\0".to_vec();
    aad.extend_from_slice(path.as_bytes());
    aad.push(0);
    aad.extend_from_slice(key_id);
    aad
}

/// One object's data key and the header that names it.
pub struct DataKey {
    id: [u8; KEY_ID_LEN],
    secret: [u8; 32],
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataKey({})", hex(&self.id))
    }
}

impl DataKey {
    pub fn random() -> DataKey {
        let mut id = [0u8; KEY_ID_LEN];
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut id);
        rand::rng().fill_bytes(&mut secret);
        DataKey::from_parts(id, secret)
    }

    fn from_parts(id: [u8; KEY_ID_LEN], secret: [u8; 32]) -> DataKey {
        DataKey {
            id,
            cipher: Aes256Gcm::new(&secret.into()),
            secret,
        }
    }

    pub fn id(&self) -> &[u8; KEY_ID_LEN] {
        &self.id
    }

    /// The 24-byte header every chunk is bound to.
    pub fn header(&self) -> [u8; HEADER_LEN as usize] {
        let mut header = [0u8; HEADER_LEN as usize];
        header[..8].copy_from_slice(DATA_MAGIC);
        header[8..].copy_from_slice(&self.id);
        header
    }

    /// Appends chunk `index` (sealed) to `out`.
    pub fn seal_chunk(&self, index: u64, last: bool, plain: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(plain);
        let tag = self
            .cipher
            .encrypt_in_place_detached(&chunk_nonce(index, last), &self.header(), &mut out[start..])
            .expect("AES-GCM seals a 64 KiB chunk");
        out.extend_from_slice(&tag);
    }

    /// Opens sealed chunk `index` (ciphertext and tag) in place; returns the plaintext length.
    pub fn open_chunk(&self, index: u64, last: bool, sealed: &mut [u8]) -> Result<usize, String> {
        let fail = || {
            format!("chunk {index} does not authenticate (the object was altered, truncated or swapped)")
        };
        if (sealed.len() as u64) < TAG_LEN {
            return Err(fail());
        }
        let plain_len = sealed.len() - TAG_LEN as usize;
        let (body, tag) = sealed.split_at_mut(plain_len);
        self.cipher
            .decrypt_in_place_detached(
                &chunk_nonce(index, last),
                &self.header(),
                body,
                Tag::from_slice(tag),
            )
            .map_err(|_| fail())?;
        Ok(plain_len)
    }

    /// Seals a whole object: header and every chunk.
    pub fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(sealed_len(plain.len() as u64) as usize);
        out.extend_from_slice(&self.header());
        let chunks = chunk_count(plain.len() as u64);
        for index in 0..chunks {
            let from = (index * CHUNK_LEN) as usize;
            let to = (from + CHUNK_LEN as usize).min(plain.len());
            self.seal_chunk(index, index + 1 == chunks, &plain[from..to], &mut out);
        }
        out
    }
}

fn chunk_nonce(index: u64, last: bool) -> Nonce<aes_gcm::aead::consts::U12> {
    let mut nonce = [0u8; 12];
    nonce[..8].copy_from_slice(&index.to_be_bytes());
    nonce[11] = u8::from(last);
    *Nonce::from_slice(&nonce)
}

/// Chunks of a plaintext of `plain` bytes (an empty object still has one).
pub fn chunk_count(plain: u64) -> u64 {
    plain.div_ceil(CHUNK_LEN).max(1)
}

/// Bytes stored for `plain` bytes of plaintext.
pub fn sealed_len(plain: u64) -> u64 {
    HEADER_LEN + plain + chunk_count(plain) * TAG_LEN
}

/// Plaintext bytes of a sealed object of `sealed` bytes; `None` if no plaintext seals
/// to that size (a truncated or foreign object).
pub fn plain_len(sealed: u64) -> Option<u64> {
    let body = sealed.checked_sub(HEADER_LEN)?;
    let (full, rest) = (body / SEALED_CHUNK_LEN, body % SEALED_CHUNK_LEN);
    match rest {
        0 if full == 0 => None,
        0 => Some(full * CHUNK_LEN),
        r if r < TAG_LEN => None,
        r => Some(full * CHUNK_LEN + r - TAG_LEN),
    }
}

/// The key id in a data object's header.
pub fn header_key_id(header: &[u8]) -> Result<[u8; KEY_ID_LEN], String> {
    if header.len() < HEADER_LEN as usize || &header[..8] != DATA_MAGIC {
        return Err("it is not an encrypted sluice lake object (no sluice header)".into());
    }
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&header[8..HEADER_LEN as usize]);
    Ok(id)
}

/// The sidecar of the object at `path` (any form of path) with data key `key_id`.
pub fn sidecar_name(path: &str, key_id: &[u8; KEY_ID_LEN]) -> String {
    format!("{path}.{}{KEY_SUFFIX}", hex(key_id))
}

/// For a sidecar's path: the data object's path and the key id; `None` for other objects.
pub fn parse_sidecar_name(path: &str) -> Option<(&str, [u8; KEY_ID_LEN])> {
    let rest = path.strip_suffix(KEY_SUFFIX)?;
    let (data, id_hex) = rest.rsplit_once('.')?;
    if id_hex.len() != 2 * KEY_ID_LEN {
        return None;
    }
    let mut id = [0u8; KEY_ID_LEN];
    hex::decode_to_slice(id_hex, &mut id).ok()?;
    Some((data, id))
}

pub fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master(byte: u8) -> MasterKey {
        MasterKey::from_material(&[byte; 32]).unwrap()
    }

    #[test]
    fn sizes_round_trip_at_chunk_boundaries() {
        for plain in [
            0,
            1,
            CHUNK_LEN - 1,
            CHUNK_LEN,
            CHUNK_LEN + 1,
            5 * CHUNK_LEN,
            123_456,
        ] {
            let key = DataKey::random();
            let sealed = key.seal(&vec![7u8; plain as usize]);
            assert_eq!(sealed.len() as u64, sealed_len(plain), "{plain}");
            assert_eq!(plain_len(sealed.len() as u64), Some(plain), "{plain}");
        }
        assert_eq!(plain_len(HEADER_LEN + 3), None);
        assert_eq!(plain_len(HEADER_LEN), None);
    }

    #[test]
    fn chunks_open_only_in_place_and_unaltered() {
        let key = DataKey::random();
        let plain = vec![3u8; (CHUNK_LEN + 10) as usize];
        let sealed = key.seal(&plain);
        let first = HEADER_LEN as usize..(HEADER_LEN + SEALED_CHUNK_LEN) as usize;
        let mut chunk = sealed[first.clone()].to_vec();
        assert_eq!(
            key.open_chunk(0, false, &mut chunk).unwrap(),
            CHUNK_LEN as usize
        );
        // As the last chunk (a cut after it), or at another index (reordered): refused.
        for (index, last) in [(0, true), (1, false)] {
            let mut chunk = sealed[first.clone()].to_vec();
            assert!(key.open_chunk(index, last, &mut chunk).is_err());
        }
        let mut flipped = sealed[first].to_vec();
        flipped[5] ^= 1;
        assert!(key.open_chunk(0, false, &mut flipped).is_err());
    }

    #[test]
    fn wrapped_keys_open_only_for_their_path_and_master_key() {
        let key = DataKey::random();
        let wrapped = master(1).wrap(&key, "d1/t/a.parquet");
        let opened = master(1)
            .unwrap(&wrapped, "d1/t/a.parquet", key.id())
            .unwrap();
        assert_eq!(opened.secret, key.secret);
        assert!(master(1)
            .unwrap(&wrapped, "d1/t/b.parquet", key.id())
            .unwrap_err()
            .contains("does not authenticate"));
        let other = master(2).unwrap(&wrapped, "d1/t/a.parquet", key.id());
        assert!(other.unwrap_err().contains("wrapped under master key"));
        assert!(MasterKey::from_material(b"short").is_err());
    }

    #[test]
    fn sidecar_names_parse_back() {
        let key = DataKey::random();
        let name = sidecar_name("raw/a/p1.json.zst", key.id());
        assert_eq!(
            parse_sidecar_name(&name),
            Some(("raw/a/p1.json.zst", *key.id()))
        );
        assert_eq!(parse_sidecar_name("raw/a/p1.json.zst"), None);
    }
}
