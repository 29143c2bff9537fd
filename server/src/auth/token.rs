//! Bearer tokens: only their sha256 is ever stored (`token_sha256` in `[auth]`), so a
//! leaked config file gives no token away. A presented token is hashed and compared with
//! every stored hash in constant time (`subtle`), so the time a refusal takes says nothing
//! about how close a guess came. `cachebackd gen-token` and `hash-token` live here too.

use std::fmt;
use std::io::Read;
use std::str::FromStr;

use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The sha256 of a token.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct TokenHash([u8; 32]);

impl TokenHash {
    /// The hash of `token` (its UTF-8 bytes, exactly as sent after `Bearer `).
    pub(crate) fn of(token: &str) -> TokenHash {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }

    /// Compares in constant time.
    pub(crate) fn ct_eq(&self, other: &TokenHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({self})")
    }
}

impl fmt::Display for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl FromStr for TokenHash {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{s:?} is not a sha256: write 64 hex digits, as `cachebackd hash-token` prints them"
            )
        };
        if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(TokenHash(out))
    }
}

/// A new random token: 32 bytes from the operating system's CSPRNG (through `rand`'s
/// thread generator, seeded from it), base64url without padding (43 characters).
pub(crate) fn generate() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// `cachebackd gen-token`: the token on stdout, its hash on stderr (so that
/// `cachebackd gen-token > web.token` keeps the secret in the file and shows the hash).
pub fn gen_token_main() -> std::process::ExitCode {
    let token = generate();
    println!("{token}");
    eprintln!("{}", TokenHash::of(&token));
    std::process::ExitCode::SUCCESS
}

/// `cachebackd hash-token`: reads a token on stdin (one trailing newline is not part of
/// it) and prints its sha256 in hex.
pub fn hash_token_main() -> std::process::ExitCode {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("cachebackd hash-token: cannot read the token on stdin: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let token = input
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&input);
    if token.is_empty() {
        eprintln!("cachebackd hash-token: no token on stdin (pipe one in, as in `cachebackd gen-token | cachebackd hash-token`)");
        return std::process::ExitCode::FAILURE;
    }
    println!("{}", TokenHash::of(token));
    std::process::ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_sha256_in_hex_and_read_back() {
        let h = TokenHash::of("abc");
        assert_eq!(
            h.to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(h.to_string().parse::<TokenHash>().unwrap(), h);
        assert_eq!(
            h.to_string().to_uppercase().parse::<TokenHash>().unwrap(),
            h
        );
        assert!(h.ct_eq(&TokenHash::of("abc")) && !h.ct_eq(&TokenHash::of("abd")));
        for bad in ["", "abc", &"g".repeat(64), &"a".repeat(63), &"a".repeat(65)] {
            assert!(bad.parse::<TokenHash>().is_err(), "{bad}");
        }
    }

    #[test]
    fn generated_tokens_are_43_base64url_characters_and_differ() {
        let (a, b) = (generate(), generate());
        assert_eq!(a.len(), 43);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_ne!(a, b);
    }
}
