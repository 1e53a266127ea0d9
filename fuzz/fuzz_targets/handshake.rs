//! Any bytes as handshake input: the hello payloads must decode or fail
//! without a panic (and round-trip when they decode), and so must a
//! preamble and a Noise message 1, 2 or 3 of junk fed to either side.
#![no_main]

use lanshare::identity::Identity;
use lanshare::peer::noise::{Initiator, Responder};
use lanshare::swarm::{Mode, SwarmKey};
use lanshare::wire::frame::{ClientHello, PREAMBLE_LEN, ServerHello};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = ClientHello::decode(data) {
        assert_eq!(ClientHello::decode(&h.encode()).as_ref(), Ok(&h));
    }
    if let Ok(h) = ServerHello::decode(data) {
        assert_eq!(ServerHello::decode(&h.encode()).as_ref(), Ok(&h));
    }
    let id = Identity::from_seed([7; 32]);
    let private = Mode::private(&SwarmKey::from_bytes([5; 32]));
    for mode in [Mode::Open, private] {
        let mut server = Responder::new(&id, &mode).unwrap();
        if let Some(pre) = data.get(..PREAMBLE_LEN) {
            let _ = server.check_preamble(pre.try_into().unwrap());
        }
        let _ = server.read_first(data);
        let mut client = Initiator::new(&id, &mode).unwrap();
        let _ = client.first(&mode);
        let _ = client.read_second(data);
    }
});
