//! Any bytes on the discovery port: decode must not panic, and whatever
//! decodes must encode back to the same bytes (a canonical format).
#![no_main]

use lanshare::wire::datagram::Datagram;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = Datagram::decode(data) {
        assert_eq!(Datagram::decode(&d.encode()).as_ref(), Ok(&d));
    }
});
