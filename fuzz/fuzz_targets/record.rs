//! Any bytes as a record stream: lengths are refused below a tag before a
//! body is read, a record that does not open is refused, and nothing
//! panics. The input's first byte also picks a plaintext that is sealed
//! and must open back unchanged.
#![no_main]

use lanshare::identity::Identity;
use lanshare::peer::noise::{self, Initiator, Responder};
use lanshare::peer::record::{self, Records};
use lanshare::swarm::Mode;
use lanshare::wire::frame::PREAMBLE_LEN;
use libfuzzer_sys::fuzz_target;

/// Two ends of a finished open-mode handshake: (sender, receiver).
fn pair() -> (Records, Records) {
    let (c, s) = (Identity::from_seed([1; 32]), Identity::from_seed([2; 32]));
    let mode = Mode::Open;
    let mut ini = Initiator::new(&c, &mode).unwrap();
    let mut res = Responder::new(&s, &mode).unwrap();
    let first = ini.first(&mode).unwrap();
    res.read_first(&first[PREAMBLE_LEN + 2..]).unwrap();
    let second = res.second(&noise::server_hello(&s, "s", [0; 16], 0)).unwrap();
    ini.read_second(&second[2..]).unwrap();
    let (third, ct) = ini.third(&noise::client_hello(&c, "c")).unwrap();
    let (_, st) = res.read_third(&third[2..]).unwrap();
    (Records::new(ct), Records::new(st))
}

fuzz_target!(|data: &[u8]| {
    let (_, mut receiver) = pair();
    // Junk as records: each is refused or (never, without the key) opened.
    let mut out = vec![0u8; record::MAX_RECORD];
    let mut rest = data;
    while rest.len() >= record::LEN_PREFIX {
        let Ok(len) = record::record_len([rest[0], rest[1]]) else {
            assert!(u16::from_be_bytes([rest[0], rest[1]]) < record::TAG_LEN as u16);
            break;
        };
        let Some(body) = rest.get(record::LEN_PREFIX..record::LEN_PREFIX + len) else {
            break;
        };
        assert!(receiver.open(body, &mut out).is_err(), "junk opened");
        rest = &rest[record::LEN_PREFIX + len..];
    }
    // The input sealed as records opens back to itself, in order.
    let (mut sender2, mut receiver2) = pair();
    let mut sealed = Vec::new();
    for piece in data.chunks(record::MAX_PLAINTEXT) {
        sender2.seal(piece, &mut sealed).unwrap();
    }
    let mut back = Vec::new();
    let mut rest = sealed.as_slice();
    while !rest.is_empty() {
        let len = record::record_len([rest[0], rest[1]]).unwrap();
        let n = receiver2
            .open(&rest[record::LEN_PREFIX..record::LEN_PREFIX + len], &mut out)
            .unwrap();
        back.extend_from_slice(&out[..n]);
        rest = &rest[record::LEN_PREFIX + len..];
    }
    assert_eq!(back, data);
});
