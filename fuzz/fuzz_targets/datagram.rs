//! Any bytes on the discovery port: decoding a signed datagram must not
//! panic, nor verifying what decodes; and whatever decodes must sign back
//! to the same layout (a canonical format): the unsigned part re-encodes
//! to the same bytes.
#![no_main]

use lanshare::wire::datagram::{Datagram, Signed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = Datagram::decode(data) {
        assert_eq!(Datagram::decode(&d.encode()).as_ref(), Ok(&d));
    }
    if let Ok(s) = Signed::decode(data) {
        let _ = s.verify();
        let unsigned = s.datagram.encode();
        assert_eq!(&data[..unsigned.len()], &unsigned[..]);
    }
});
