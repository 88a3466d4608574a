//! A capture reader small enough to trust: pcap files (the classic format
//! tcpdump `-w` writes, libpcap's savefile layout) of Ethernet or Linux
//! cooked frames, IPv4 only, and per-direction TCP byte streams rebuilt
//! from the segments. Only what the capture tests need; anything it does
//! not understand is skipped and counted, never guessed at.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// One direction of one TCP connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct FlowId {
    pub src: (Ipv4Addr, u16),
    pub dst: (Ipv4Addr, u16),
}

/// A direction's bytes, from its SYN on, up to the first byte the capture
/// missed.
#[derive(Debug)]
pub struct TcpStream {
    pub flow: FlowId,
    pub bytes: Vec<u8>,
    /// Whether segments after a hole were dropped (a packet the capture lost).
    pub truncated: bool,
}

/// The whole capture: every record's bytes, and what was in it.
#[derive(Debug, Default)]
pub struct Capture {
    /// Each captured frame, as written (link header included).
    pub frames: Vec<Vec<u8>>,
    /// Records whose link or network layer was not Ethernet/cooked IPv4.
    pub skipped: usize,
    segments: BTreeMap<FlowId, Flow>,
}

#[derive(Debug, Default)]
struct Flow {
    /// Sequence number of the SYN, if the capture saw it.
    syn: Option<u32>,
    segments: Vec<(u32, Vec<u8>)>,
}

const LINKTYPE_ETHERNET: u32 = 1;
const LINKTYPE_LINUX_SLL: u32 = 113;

fn u16_be(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn u32_be(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Parses a pcap file. Panics (a test helper) on a file that is not pcap.
pub fn parse(file: &[u8]) -> Capture {
    assert!(file.len() >= 24, "pcap file shorter than its header");
    let magic = u32::from_le_bytes(file[0..4].try_into().unwrap());
    let little = match magic {
        0xa1b2_c3d4 | 0xa1b2_3c4d => true,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => false,
        m => panic!("not a pcap file (magic {m:#010x}; pcapng is not read)"),
    };
    let u32_at = |at: usize| {
        let b: [u8; 4] = file[at..at + 4].try_into().unwrap();
        if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let linktype = u32_at(20) & 0xffff;
    assert!(
        linktype == LINKTYPE_ETHERNET || linktype == LINKTYPE_LINUX_SLL,
        "link type {linktype} is not Ethernet or Linux cooked"
    );
    let mut cap = Capture::default();
    let mut at = 24;
    // A record cut short by the capture's end (tcpdump killed mid-write)
    // is ignored.
    while at + 16 <= file.len() {
        let incl = u32_at(at + 8) as usize;
        let body = at + 16;
        if body + incl > file.len() {
            break;
        }
        let frame = file[body..body + incl].to_vec();
        cap.record(&frame, linktype);
        cap.frames.push(frame);
        at = body + incl;
    }
    cap
}

impl Capture {
    fn record(&mut self, frame: &[u8], linktype: u32) {
        let (ethertype, ip_at) = match linktype {
            LINKTYPE_ETHERNET if frame.len() >= 14 => (u16_be(frame, 12), 14),
            LINKTYPE_LINUX_SLL if frame.len() >= 16 => (u16_be(frame, 14), 16),
            _ => {
                self.skipped += 1;
                return;
            }
        };
        if ethertype != 0x0800 || !self.ipv4(&frame[ip_at..]) {
            self.skipped += 1;
        }
    }

    /// Files a TCP segment; false when the packet is not IPv4 TCP.
    fn ipv4(&mut self, ip: &[u8]) -> bool {
        if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 6 {
            return false;
        }
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let total = usize::from(u16_be(ip, 2)).min(ip.len());
        if ihl < 20 || total < ihl + 20 {
            return false;
        }
        let tcp = &ip[ihl..total];
        let data_at = usize::from(tcp[12] >> 4) * 4;
        if data_at < 20 || data_at > tcp.len() {
            return false;
        }
        let src = Ipv4Addr::from(u32_be(ip, 12));
        let dst = Ipv4Addr::from(u32_be(ip, 16));
        let flow = FlowId {
            src: (src, u16_be(tcp, 0)),
            dst: (dst, u16_be(tcp, 2)),
        };
        let seq = u32_be(tcp, 4);
        let syn = tcp[13] & 0x02 != 0;
        let f = self.segments.entry(flow).or_default();
        if syn {
            f.syn = Some(seq);
        }
        if data_at < tcp.len() {
            f.segments.push((seq, tcp[data_at..].to_vec()));
        }
        true
    }

    /// Every direction whose SYN was captured, its bytes rebuilt in
    /// sequence order (retransmissions and overlaps resolved by offset).
    /// Directions that began before the capture are left out: without
    /// their start, frame boundaries are unknown.
    pub fn tcp_streams(&self) -> Vec<TcpStream> {
        let mut out = Vec::new();
        for (flow, f) in &self.segments {
            let Some(syn) = f.syn else { continue };
            let first = syn.wrapping_add(1);
            let mut segs: Vec<(usize, &[u8])> = f
                .segments
                .iter()
                .map(|(seq, data)| (seq.wrapping_sub(first) as usize, data.as_slice()))
                // Offsets past 2^31 are segments from before the SYN
                // (wrapped negative): not part of this connection.
                .filter(|(off, _)| *off < 1 << 31)
                .collect();
            segs.sort_by_key(|(off, _)| *off);
            let mut bytes = Vec::new();
            let mut truncated = false;
            for (off, data) in segs {
                if off > bytes.len() {
                    truncated = true;
                    break;
                }
                let end = off + data.len();
                if end > bytes.len() {
                    bytes.extend_from_slice(&data[bytes.len() - off..]);
                }
            }
            out.push(TcpStream {
                flow: *flow,
                bytes,
                truncated,
            });
        }
        out
    }
}
