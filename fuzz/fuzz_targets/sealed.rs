//! Any bytes on the discovery port of a private node: opening (under a
//! fixed key, and under the key of a datagram sealed from the input) must
//! not panic, nor decoding and verifying what opens; and the mDNS blob
//! parser must not panic on any text.
#![no_main]

use lanshare::mdns::blob;
use lanshare::wire::datagram::{Signed, open, seal};
use libfuzzer_sys::fuzz_target;

const KEY: [u8; 32] = [0x42; 32];

fuzz_target!(|data: &[u8]| {
    if let Ok(plain) = open(data, &KEY) {
        if let Ok(s) = Signed::decode(&plain) {
            let _ = s.verify();
        }
    }
    // Whatever fits is sealed and opened back to itself.
    if data.len() <= 1000 {
        let sealed = seal(data, &KEY, &[7; 24]);
        assert_eq!(open(&sealed, &KEY).as_deref(), Ok(data));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = blob::open(text, &KEY);
        let _ = blob::unbase64url(text);
    }
});
