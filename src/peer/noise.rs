//! The Noise handshake that opens every peer connection, and proves both
//! ends' node ids.
//!
//! The client sends a 6-byte preamble in clear (`"LNSH" version mode`, see
//! `wire::frame::preamble`), which is also the Noise prologue, so a
//! downgraded or altered preamble breaks the handshake. Then three Noise
//! messages, each as `length u16 BE | message` (at most
//! `wire::frame::MAX_HANDSHAKE_MESSAGE` bytes):
//! 1. client → server: `e` (private mode: `psk, e`), empty payload;
//! 2. server → client: `e, ee, s, es` + the server hello;
//! 3. client → server: `s, se` + the client hello.
//!
//! Open mode is `Noise_XX_25519_AESGCM_SHA256`; private mode is
//! `Noise_XXpsk0_25519_AESGCM_SHA256` with the swarm's TCP psk. With psk0,
//! message 1 already carries a tag under the psk: a server reading one
//! without the key (or with another key) closes before writing a byte, and
//! so it does on a preamble of another mode. A hello names its Ed25519
//! key and the key's signature over the sender's Noise static key; the
//! receiver checks it against the static key the handshake authenticated
//! (`identity::check_static_binding`) and takes the node id it proves.
//!
//! [`Initiator`] and [`Responder`] are the two sides as byte-in, byte-out
//! steps (no I/O: tests, benches and fuzzing drive them); [`initiate`] and
//! [`respond`] run them on a socket. Owns the Noise parameters and the
//! hello checks; never touches frames after the handshake (that is
//! [`super::conn`]) nor the dictionary.

use snow::resolvers::{DefaultResolver, FallbackResolver, RingResolver};
use snow::{Builder, HandshakeState, TransportState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::PeerError;
use crate::id::NodeId;
use crate::identity::{Identity, PublicKey, check_static_binding};
use crate::swarm::Mode;
use crate::wire::WireError;
use crate::wire::frame::{
    self, ClientHello, MAX_HANDSHAKE_MESSAGE, PREAMBLE_LEN, ServerHello, preamble,
};

/// The Noise protocol of open mode.
pub const OPEN_PROTOCOL: &str = "Noise_XX_25519_AESGCM_SHA256";
/// The Noise protocol of private mode (psk = the swarm's TCP psk).
pub const PRIVATE_PROTOCOL: &str = "Noise_XXpsk0_25519_AESGCM_SHA256";
/// Bytes of a handshake message's length field.
const LEN_PREFIX: usize = 2;

/// What a finished handshake proved about the other side: its node id
/// (derived from the key that signed its Noise static key) and its hello.
#[derive(Clone, Debug)]
pub struct Proven<H> {
    pub node: NodeId,
    pub key: PublicKey,
    pub hello: H,
}

/// Which side of the handshake this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Initiator,
    Responder,
}

fn noise_failed(e: snow::Error) -> PeerError {
    PeerError::Handshake(WireError::Malformed(format!("noise: {e}")))
}

/// A fresh handshake state of `role` for `identity` in `mode`.
fn handshake_state(
    identity: &Identity,
    mode: &Mode,
    role: Role,
) -> Result<HandshakeState, PeerError> {
    let protocol = match mode {
        Mode::Open => OPEN_PROTOCOL,
        Mode::Private(_) => PRIVATE_PROTOCOL,
    };
    let params = protocol.parse().map_err(noise_failed)?;
    let resolver = FallbackResolver::new(Box::new(RingResolver), Box::new(DefaultResolver));
    let prologue = preamble(mode.wire_byte());
    let mut builder = Builder::with_resolver(params, Box::new(resolver))
        .local_private_key(identity.noise_secret())
        .and_then(|b| b.prologue(&prologue))
        .map_err(noise_failed)?;
    if let Some(keys) = mode.keys() {
        builder = builder.psk(0, &keys.tcp_psk).map_err(noise_failed)?;
    }
    match role {
        Role::Initiator => builder.build_initiator(),
        Role::Responder => builder.build_responder(),
    }
    .map_err(noise_failed)
}

/// Writes one handshake message with `payload`, length-prefixed, onto `out`.
fn write_framed(
    hs: &mut HandshakeState,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), PeerError> {
    let at = out.len();
    out.resize(at + LEN_PREFIX + MAX_HANDSHAKE_MESSAGE, 0);
    let n = hs
        .write_message(payload, &mut out[at + LEN_PREFIX..])
        .map_err(noise_failed)?;
    out.truncate(at + LEN_PREFIX + n);
    out[at..at + LEN_PREFIX].copy_from_slice(&(n as u16).to_be_bytes());
    Ok(())
}

/// Reads one handshake message (its body, after the length) into a payload.
fn read_payload(hs: &mut HandshakeState, message: &[u8]) -> Result<Vec<u8>, PeerError> {
    let mut payload = vec![0u8; MAX_HANDSHAKE_MESSAGE];
    let n = hs
        .read_message(message, &mut payload)
        .map_err(noise_failed)?;
    payload.truncate(n);
    Ok(payload)
}

/// Checks a hello's key against the static key the handshake proved.
fn prove(
    hs: &HandshakeState,
    key: &PublicKey,
    sig: &crate::identity::Signature,
) -> Result<NodeId, PeerError> {
    let remote = hs.get_remote_static().ok_or(PeerError::Unproven)?;
    check_static_binding(key, remote, sig).map_err(|_| PeerError::Unproven)
}

/// The client's side, step by step.
pub struct Initiator {
    hs: HandshakeState,
}

impl Initiator {
    pub fn new(identity: &Identity, mode: &Mode) -> Result<Initiator, PeerError> {
        Ok(Initiator {
            hs: handshake_state(identity, mode, Role::Initiator)?,
        })
    }

    /// The preamble and message 1, ready to send.
    pub fn first(&mut self, mode: &Mode) -> Result<Vec<u8>, PeerError> {
        let mut out = preamble(mode.wire_byte()).to_vec();
        write_framed(&mut self.hs, &[], &mut out)?;
        Ok(out)
    }

    /// Reads message 2 (after its length): the server's proven hello.
    pub fn read_second(&mut self, message: &[u8]) -> Result<Proven<ServerHello>, PeerError> {
        let payload = read_payload(&mut self.hs, message)?;
        let hello = ServerHello::decode(&payload).map_err(PeerError::Handshake)?;
        let node = prove(&self.hs, &hello.key, &hello.static_sig)?;
        Ok(Proven {
            node,
            key: hello.key,
            hello,
        })
    }

    /// Message 3 carrying `hello`, ready to send; then the transport.
    pub fn third(mut self, hello: &ClientHello) -> Result<(Vec<u8>, TransportState), PeerError> {
        let mut out = Vec::new();
        write_framed(&mut self.hs, &hello.encode(), &mut out)?;
        let transport = self.hs.into_transport_mode().map_err(noise_failed)?;
        Ok((out, transport))
    }
}

/// The server's side, step by step.
pub struct Responder {
    hs: HandshakeState,
    mode_byte: u8,
}

impl Responder {
    pub fn new(identity: &Identity, mode: &Mode) -> Result<Responder, PeerError> {
        Ok(Responder {
            hs: handshake_state(identity, mode, Role::Responder)?,
            mode_byte: mode.wire_byte(),
        })
    }

    /// Checks the client's preamble: another mode is another swarm.
    pub fn check_preamble(&self, pre: &[u8; PREAMBLE_LEN]) -> Result<(), PeerError> {
        let mode = frame::check_preamble(pre).map_err(PeerError::Handshake)?;
        if mode != self.mode_byte {
            return Err(PeerError::OtherSwarm);
        }
        Ok(())
    }

    /// Reads message 1. In private mode a failure means the client lacks
    /// the swarm key (or holds another).
    pub fn read_first(&mut self, message: &[u8]) -> Result<(), PeerError> {
        let mut payload = [0u8; 64];
        match self.hs.read_message(message, &mut payload) {
            Ok(0) => Ok(()),
            Ok(_) => Err(PeerError::Handshake(WireError::Malformed(
                "payload in the first handshake message".into(),
            ))),
            Err(_) if self.mode_byte != 0 => Err(PeerError::OtherSwarm),
            Err(e) => Err(noise_failed(e)),
        }
    }

    /// Message 2 carrying `hello`, ready to send.
    pub fn second(&mut self, hello: &ServerHello) -> Result<Vec<u8>, PeerError> {
        let mut out = Vec::new();
        write_framed(&mut self.hs, &hello.encode(), &mut out)?;
        Ok(out)
    }

    /// Reads message 3: the client's proven hello, and the transport.
    pub fn read_third(
        mut self,
        message: &[u8],
    ) -> Result<(Proven<ClientHello>, TransportState), PeerError> {
        let payload = read_payload(&mut self.hs, message)?;
        let hello = ClientHello::decode(&payload).map_err(PeerError::Handshake)?;
        let node = prove(&self.hs, &hello.key, &hello.static_sig)?;
        let transport = self.hs.into_transport_mode().map_err(noise_failed)?;
        let proven = Proven {
            node,
            key: hello.key,
            hello,
        };
        Ok((proven, transport))
    }
}

/// This node's hello as a client.
pub fn client_hello(identity: &Identity, name: &str) -> ClientHello {
    ClientHello {
        key: identity.public_key(),
        static_sig: *identity.static_sig(),
        name: crate::wire::clean_text(name, crate::wire::MAX_NODE_NAME),
    }
}

/// This node's hello as a server, with its inventory's digest and size.
pub fn server_hello(
    identity: &Identity,
    name: &str,
    digest: [u8; 16],
    contents: u32,
) -> ServerHello {
    ServerHello {
        key: identity.public_key(),
        static_sig: *identity.static_sig(),
        name: crate::wire::clean_text(name, crate::wire::MAX_NODE_NAME),
        digest,
        contents,
    }
}

/// The length a handshake message's prefix announces, refused over
/// [`MAX_HANDSHAKE_MESSAGE`] before its body is read.
fn message_len(prefix: [u8; LEN_PREFIX]) -> Result<usize, PeerError> {
    let len = u16::from_be_bytes(prefix) as usize;
    if len > MAX_HANDSHAKE_MESSAGE {
        return Err(PeerError::Handshake(WireError::TooLarge {
            len,
            max: MAX_HANDSHAKE_MESSAGE,
        }));
    }
    Ok(len)
}

/// Reads one length-prefixed handshake message, refusing one over the limit
/// before its body.
async fn read_message(stream: &mut TcpStream) -> Result<Vec<u8>, PeerError> {
    let mut len = [0u8; LEN_PREFIX];
    stream.read_exact(&mut len).await?;
    let mut message = vec![0u8; message_len(len)?];
    stream.read_exact(&mut message).await?;
    Ok(message)
}

/// The client's handshake on `stream` (the caller bounds it in time):
/// the server's proven hello and the transport.
pub async fn initiate(
    stream: &mut TcpStream,
    identity: &Identity,
    mode: &Mode,
    name: &str,
) -> Result<(Proven<ServerHello>, TransportState), PeerError> {
    let mut me = Initiator::new(identity, mode)?;
    stream.write_all(&me.first(mode)?).await?;
    let second = read_message(stream).await?;
    let server = me.read_second(&second)?;
    let (third, transport) = me.third(&client_hello(identity, name))?;
    stream.write_all(&third).await?;
    Ok((server, transport))
}

/// The server's handshake on `stream` (the caller bounds it in time):
/// nothing is written unless the preamble and message 1 show the client
/// is in this node's swarm.
pub async fn respond(
    stream: &mut TcpStream,
    identity: &Identity,
    mode: &Mode,
    hello: &ServerHello,
) -> Result<(Proven<ClientHello>, TransportState), PeerError> {
    let mut me = Responder::new(identity, mode)?;
    let mut pre = [0u8; PREAMBLE_LEN];
    stream.read_exact(&mut pre).await?;
    me.check_preamble(&pre)?;
    let first = match read_message(stream).await {
        Err(PeerError::Io(e)) if mode.is_private() => {
            tracing::trace!(error = %e, "no first handshake message");
            return Err(PeerError::OtherSwarm);
        }
        r => r?,
    };
    me.read_first(&first)?;
    stream.write_all(&me.second(hello)?).await?;
    let third = read_message(stream).await?;
    me.read_third(&third)
}

/// [`read_message`] on a blocking stream.
fn read_message_blocking(stream: &mut impl std::io::Read) -> Result<Vec<u8>, PeerError> {
    let mut len = [0u8; LEN_PREFIX];
    stream.read_exact(&mut len)?;
    let mut message = vec![0u8; message_len(len)?];
    stream.read_exact(&mut message)?;
    Ok(message)
}

/// [`initiate`] on a blocking stream (tests and tools that speak the
/// protocol by hand).
pub fn initiate_blocking(
    stream: &mut (impl std::io::Read + std::io::Write),
    identity: &Identity,
    mode: &Mode,
    name: &str,
) -> Result<(Proven<ServerHello>, TransportState), PeerError> {
    let mut me = Initiator::new(identity, mode)?;
    stream.write_all(&me.first(mode)?)?;
    let second = read_message_blocking(stream)?;
    let server = me.read_second(&second)?;
    let (third, transport) = me.third(&client_hello(identity, name))?;
    stream.write_all(&third)?;
    Ok((server, transport))
}

/// [`respond`] on a blocking stream (tests that play a server by hand).
pub fn respond_blocking(
    stream: &mut (impl std::io::Read + std::io::Write),
    identity: &Identity,
    mode: &Mode,
    hello: &ServerHello,
) -> Result<(Proven<ClientHello>, TransportState), PeerError> {
    let mut me = Responder::new(identity, mode)?;
    let mut pre = [0u8; PREAMBLE_LEN];
    stream.read_exact(&mut pre)?;
    me.check_preamble(&pre)?;
    let first = read_message_blocking(stream)?;
    me.read_first(&first)?;
    stream.write_all(&me.second(hello)?)?;
    let third = read_message_blocking(stream)?;
    me.read_third(&third)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::swarm::SwarmKey;

    fn ids() -> (Identity, Identity) {
        (Identity::from_seed([1; 32]), Identity::from_seed([2; 32]))
    }

    /// Runs the three messages in memory; the proven ids each side saw.
    fn run(
        client: &Identity,
        cmode: &Mode,
        server: &Identity,
        smode: &Mode,
    ) -> Result<(NodeId, NodeId), PeerError> {
        let mut c = Initiator::new(client, cmode)?;
        let mut s = Responder::new(server, smode)?;
        let first = c.first(cmode)?;
        s.check_preamble(first[..PREAMBLE_LEN].try_into().unwrap())?;
        s.read_first(&first[PREAMBLE_LEN + LEN_PREFIX..])?;
        let second = s.second(&server_hello(server, "srv", [0; 16], 0))?;
        let seen_by_client = c.read_second(&second[LEN_PREFIX..])?;
        let (third, _) = c.third(&client_hello(client, "cli"))?;
        let (seen_by_server, _) = s.read_third(&third[LEN_PREFIX..])?;
        Ok((seen_by_client.node, seen_by_server.node))
    }

    #[test]
    fn open_and_private_handshakes_prove_both_ids() {
        let (a, b) = ids();
        let private = Mode::private(&SwarmKey::from_bytes([9; 32]));
        for mode in [Mode::Open, private] {
            let (server_id, client_id) = run(&a, &mode, &b, &mode).unwrap();
            assert_eq!((server_id, client_id), (b.node_id(), a.node_id()));
        }
    }

    #[test]
    fn another_key_or_mode_is_another_swarm() {
        let (a, b) = ids();
        let k1 = Mode::private(&SwarmKey::from_bytes([9; 32]));
        let k2 = Mode::private(&SwarmKey::from_bytes([8; 32]));
        for (c, s) in [(&k1, &k2), (&Mode::Open, &k1), (&k1, &Mode::Open)] {
            let e = run(&a, c, &b, s).unwrap_err();
            assert!(matches!(e, PeerError::OtherSwarm), "{e}");
        }
    }

    #[test]
    fn a_hello_signed_by_another_key_is_refused() {
        let (a, b) = ids();
        let mode = Mode::Open;
        let mut c = Initiator::new(&a, &mode).unwrap();
        let mut s = Responder::new(&b, &mode).unwrap();
        let first = c.first(&mode).unwrap();
        s.read_first(&first[PREAMBLE_LEN + LEN_PREFIX..]).unwrap();
        // The server claims a third key (and its binding of that key's own
        // static key), which does not sign the static key it uses.
        let other = Identity::from_seed([3; 32]);
        let second = s.second(&server_hello(&other, "srv", [0; 16], 0)).unwrap();
        let e = c.read_second(&second[LEN_PREFIX..]).unwrap_err();
        assert!(matches!(e, PeerError::Unproven), "{e}");
    }
}
