//! An rtnetlink connection opened inside one namespace, and the few
//! requests the testbeds make with it: veth pairs, links up, addresses,
//! IPv4 routes. Shared by [`super::Testbed`] and [`super::Network`]; owns
//! only its socket and connection task.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::TestbedError;
use crate::netns::{Netns, NetnsError};
use crate::xfrm::Prefix;

/// An rtnetlink connection opened inside one namespace; its connection task
/// is aborted when it is dropped, on success and error paths alike.
pub(super) struct Rtnl {
    prefix: String,
    netns: Netns,
    handle: Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Rtnl {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Rtnl {
    pub(super) async fn open(prefix: &str, netns: &Netns) -> Result<Self, TestbedError> {
        let runtime = tokio::runtime::Handle::current();
        // The socket must be created inside the namespace; registering it
        // with the reactor needs the runtime context on that thread.
        let (connection, handle, _) = netns
            .run(move || {
                let _enter = runtime.enter();
                rtnetlink::new_connection()
            })?
            .map_err(|source| TestbedError::Connect {
                prefix: prefix.to_string(),
                netns: netns.describe(),
                source,
            })?;
        Ok(Self {
            prefix: prefix.to_string(),
            netns: netns.clone(),
            handle,
            task: tokio::spawn(connection),
        })
    }

    fn fail(&self, step: String) -> impl FnOnce(rtnetlink::Error) -> TestbedError + '_ {
        move |source| TestbedError::Rtnetlink {
            prefix: self.prefix.clone(),
            netns: self.netns.describe(),
            step,
            source,
        }
    }

    async fn index(&self, name: &str) -> Result<u32, TestbedError> {
        let link = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute()
            .try_next()
            .await
            .map_err(self.fail(format!("look up {name}")))?;
        link.map(|l| l.header.index)
            .ok_or_else(|| TestbedError::NoSuchLink {
                prefix: self.prefix.clone(),
                netns: self.netns.describe(),
                name: name.to_string(),
            })
    }

    pub(super) async fn veth(
        &self,
        name: &str,
        peer: &str,
        peer_netns: &Netns,
    ) -> Result<(), TestbedError> {
        let Netns::Path(path) = peer_netns else {
            unreachable!("testbed namespaces are always named");
        };
        let peer_ns = std::fs::File::open(path).map_err(|source| NetnsError::Open {
            path: path.clone(),
            source,
        })?;
        let peer_msg = LinkUnspec::new_with_name(peer)
            .setns_by_fd(peer_ns.as_raw_fd())
            .build();
        let msg = LinkVeth::new(name, peer)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(self.fail(format!("create veth {name}/{peer}")))?;
        // The kernel has taken its own reference to the namespace by now.
        drop(peer_ns);
        Ok(())
    }

    pub(super) async fn up(&self, name: &str) -> Result<(), TestbedError> {
        let index = self.index(name).await?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(self.fail(format!("set {name} up")))
    }

    pub(super) async fn address(
        &self,
        name: &str,
        addr: IpAddr,
        len: u8,
    ) -> Result<(), TestbedError> {
        let index = self.index(name).await?;
        self.handle
            .address()
            .add(index, addr, len)
            .execute()
            .await
            .map_err(self.fail(format!("add {addr}/{len} to {name}")))
    }

    pub(super) async fn route(&self, dst: Prefix, via: IpAddr) -> Result<(), TestbedError> {
        let (IpAddr::V4(d), IpAddr::V4(g)) = (dst.addr, via) else {
            unreachable!("the testbed is IPv4");
        };
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(d, dst.len)
            .gateway(g)
            .build();
        self.handle
            .route()
            .add(msg)
            .execute()
            .await
            .map_err(self.fail(format!("add route {dst} via {via}")))
    }
}
