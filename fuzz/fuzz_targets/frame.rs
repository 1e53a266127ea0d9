//! Any bytes as a TCP frame, in both directions: header parsing and body
//! decoding must not panic, and requests that decode must round-trip.
#![no_main]

use lanshare::wire::frame::{self, MAX_REQUEST_FRAME, MAX_RESPONSE_FRAME, Request, Response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < frame::HEADER_LEN {
        return;
    }
    let header: [u8; frame::HEADER_LEN] = data[..frame::HEADER_LEN].try_into().unwrap();
    let body = &data[frame::HEADER_LEN..];
    if let Ok((kind, len)) = frame::parse_header(&header, MAX_REQUEST_FRAME) {
        let body = &body[..len.min(body.len())];
        if let Ok(r) = Request::decode(kind, body) {
            let again = r.encode();
            assert_eq!(Request::decode(again[4], &again[5..]).as_ref(), Ok(&r));
        }
    }
    if let Ok((kind, len)) = frame::parse_header(&header, MAX_RESPONSE_FRAME) {
        let _ = Response::decode(kind, &body[..len.min(body.len())], len);
    }
});
