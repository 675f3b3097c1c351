//! The route table: for every API the broker serves, its version range, the kinds of listener it
//! is served on, whether a broker forwards it to the active controller, and its handler. The one
//! `routes!` list below makes both [`ROUTES`] (which ApiVersions answers from) and the `match`
//! in [`dispatch`], so nothing is advertised that is not dispatched, and the reverse.
//!
//! Version ranges are written once, in `caudal_protocol::SUPPORTED_APIS`, because the decoder
//! needs them before any route is looked at; each route takes its range from there at compile
//! time (a route for an API without a range does not build), and a test checks that every range
//! there has exactly one route here. Adding an API: its range in `SUPPORTED_APIS`, its line here.

use std::fmt;
use std::sync::Arc;

use caudal_protocol::kafka_protocol::messages::api_versions_response::ApiVersion;
use caudal_protocol::kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind};
use caudal_protocol::kafka_protocol::protocol::VersionRange;
use caudal_protocol::{supported_range, Request};

use crate::handlers::{self, ready, Connection, Reply};
use crate::Broker;

/// What a listener is for. Kafka serves the client APIs (Produce, Fetch, groups, admin) on broker
/// listeners and the KRaft APIs (BrokerRegistration, BrokerHeartbeat, UnregisterBroker,
/// AllocateProducerIds, Envelope, DescribeQuorum, ...) on the controller listener; ApiVersions is
/// served on both. An API is refused on a listener of a kind it is not served on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ListenerKind {
    /// Kafka clients and brokers talking to a broker.
    #[default]
    Client,
    /// Brokers and voters talking to the controller quorum (`controller.listener.names`).
    Controller,
}

impl ListenerKind {
    /// Every kind.
    pub const ALL: &'static [ListenerKind] = &[ListenerKind::Client, ListenerKind::Controller];
}

impl fmt::Display for ListenerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ListenerKind::Client => "client",
            ListenerKind::Controller => "controller",
        })
    }
}

/// One API the broker serves.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub api: ApiKey,
    /// The versions served, from `caudal_protocol::SUPPORTED_APIS`.
    pub versions: VersionRange,
    /// The listener kinds this API is served on.
    pub listeners: &'static [ListenerKind],
    /// A request a broker sends on to the active controller instead of answering itself
    /// (docs/design/cluster.md, section 5): admin changes in an Envelope, DescribeQuorum as
    /// itself to the quorum leader's controller listener.
    pub forwarded: bool,
}

impl Route {
    /// Whether this route serves `version` on a listener of `kind`.
    pub fn serves(&self, version: i16, kind: ListenerKind) -> bool {
        self.listeners.contains(&kind)
            && self.versions.min <= version
            && version <= self.versions.max
    }
}

/// Why a decoded request was not dispatched. The connection is closed, as Kafka closes it for an
/// API that the listener does not serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{api:?} is not served on a {kind} listener")]
    NotOnListener { api: ApiKey, kind: ListenerKind },
    /// A controller API reached the broker's dispatch: the controller listener serves it.
    #[error("{api:?} is served by the controller listener's loop")]
    ControllerApi { api: ApiKey },
    /// The decoder refuses every API without a route, so off the wire this does not happen.
    #[error("{api:?} has no route")]
    NoRoute { api: ApiKey },
}

/// What a handler gets besides its request body.
pub struct Ctx<'a> {
    pub broker: &'a Arc<Broker>,
    pub header: &'a RequestHeader,
    pub version: i16,
    pub conn: Connection,
}

impl Ctx<'_> {
    /// The request's client id, empty if it has none.
    fn client_id(&self) -> String {
        self.header
            .client_id
            .as_ref()
            .map(|c| c.as_str().to_string())
            .unwrap_or_default()
    }
}

const CLIENT: &[ListenerKind] = &[ListenerKind::Client];
/// What brokers send the active controller. The controller listener's own loop
/// (`controller_listener`) serves these: it runs before the broker exists, while the quorum
/// elects its leader.
const CONTROLLER: &[ListenerKind] = &[ListenerKind::Controller];
/// Every kind of listener (ApiVersions: a client asks it first, whatever it connected to).
const ALL: &[ListenerKind] = ListenerKind::ALL;

/// The range of `api` in `caudal_protocol::SUPPORTED_APIS`; evaluated at compile time, so a route
/// without a range does not build.
const fn range_of(api: ApiKey) -> VersionRange {
    match supported_range(api) {
        Some(range) => range,
        None => panic!("a route for an API that caudal_protocol::SUPPORTED_APIS has no range for"),
    }
}

/// `API on LISTENERS, forwarded: BOOL => |body, ctx| handler;` for each route. `handler` is an
/// expression (it may `.await`) giving the [`Reply`]; `body` is the decoded request of that API and
/// `ctx` the [`Ctx`].
macro_rules! routes {
    ($( $api:ident on $listeners:ident, forwarded: $forwarded:literal
        => |$body:ident, $cx:ident| $handler:expr; )*) => {
        /// Every route, in the order ApiVersions lists them.
        pub const ROUTES: &[Route] = &[$(
            Route {
                api: ApiKey::$api,
                versions: range_of(ApiKey::$api),
                listeners: $listeners,
                forwarded: $forwarded,
            },
        )*];

        /// Runs the handler of `body`'s API, if it is served on `ctx`'s listener kind. The
        /// version is not checked again: the decoder only accepts versions in the route's range.
        async fn run(ctx: Ctx<'_>, api: ApiKey, body: RequestKind) -> Result<Reply, Refused> {
            let kind = ctx.conn.kind;
            match body {
                $(RequestKind::$api($body) => {
                    if !$listeners.contains(&kind) {
                        return Err(Refused::NotOnListener { api: ApiKey::$api, kind });
                    }
                    let $cx = &ctx;
                    Ok($handler)
                })*
                _ => Err(Refused::NoRoute { api }),
            }
        }

        /// A request body of `api` with every field at its default, for each route.
        #[cfg(test)]
        fn sample(api: ApiKey) -> Option<RequestKind> {
            match api {
                $(ApiKey::$api => Some(RequestKind::$api(Default::default())),)*
                _ => None,
            }
        }
    };
}

routes! {
    Produce on CLIENT, forwarded: false
        => |r, cx| handlers::produce::handle(cx.broker, r, cx.version, cx.conn.listener).await;
    Fetch on CLIENT, forwarded: false
        => |r, cx| handlers::fetch::handle(cx.broker.clone(), r, cx.version, cx.conn.listener);
    ListOffsets on CLIENT, forwarded: false
        => |r, cx| ready(handlers::list_offsets::handle(cx.broker, r, cx.version));
    OffsetForLeaderEpoch on CLIENT, forwarded: false
        => |r, cx| ready(handlers::offset_for_leader_epoch::handle(cx.broker, r));
    Metadata on CLIENT, forwarded: false
        => |r, cx| ready(
            handlers::metadata::handle(cx.broker, r, cx.version, cx.conn.listener).await,
        );
    ApiVersions on ALL, forwarded: false
        => |r, cx| ready(handlers::api_versions::handle(r, cx.version, cx.conn.kind));
    CreateTopics on CLIENT, forwarded: true
        => |r, cx| ready(handlers::create_topics::handle(cx.broker, r, cx.version).await);
    DeleteTopics on CLIENT, forwarded: true
        => |r, cx| ready(handlers::delete_topics::handle(cx.broker, r, cx.version).await);
    CreatePartitions on CLIENT, forwarded: true
        => |r, cx| ready(handlers::create_partitions::handle(cx.broker, r).await);
    DescribeConfigs on CLIENT, forwarded: false
        => |r, cx| ready(handlers::describe_configs::handle(cx.broker, r, cx.version));
    DescribeCluster on CLIENT, forwarded: false
        => |r, cx| ready(handlers::describe_cluster::handle(
            cx.broker, r, cx.version, cx.conn.listener,
        ));
    InitProducerId on CLIENT, forwarded: false
        => |r, cx| ready(handlers::init_producer_id::handle(cx.broker, r, cx.version).await);
    AddPartitionsToTxn on CLIENT, forwarded: false
        => |r, cx| ready(handlers::transactions::add_partitions(cx.broker, r, cx.version).await);
    AddOffsetsToTxn on CLIENT, forwarded: false
        => |r, cx| ready(handlers::transactions::add_offsets(cx.broker, r, cx.version).await);
    EndTxn on CLIENT, forwarded: false
        => |r, cx| ready(handlers::transactions::end(cx.broker, r, cx.version).await);
    TxnOffsetCommit on CLIENT, forwarded: false
        => |r, cx| handlers::transactions::txn_offset_commit(cx.broker, r, cx.version).await;
    ListTransactions on CLIENT, forwarded: false
        => |r, cx| ready(handlers::transactions::list(cx.broker, r));
    DescribeTransactions on CLIENT, forwarded: false
        => |r, cx| ready(handlers::transactions::describe(cx.broker, r));
    DescribeProducers on CLIENT, forwarded: false
        => |r, cx| ready(handlers::transactions::describe_producers(cx.broker, r));
    WriteTxnMarkers on CLIENT, forwarded: false
        => |r, cx| ready(handlers::transactions::write_markers(cx.broker, r).await);
    FindCoordinator on CLIENT, forwarded: false
        => |r, cx| ready(handlers::find_coordinator::handle(
            cx.broker, r, cx.version, cx.conn.listener,
        ));
    JoinGroup on CLIENT, forwarded: false
        => |r, cx| handlers::join_group::handle(
            cx.broker, r, cx.version, cx.conn.peer, cx.client_id(),
        );
    SyncGroup on CLIENT, forwarded: false
        => |r, cx| handlers::sync_group::handle(cx.broker, r, cx.version);
    Heartbeat on CLIENT, forwarded: false
        => |r, cx| ready(handlers::heartbeat::handle(cx.broker, r));
    LeaveGroup on CLIENT, forwarded: false
        => |r, cx| ready(handlers::leave_group::handle(cx.broker, r, cx.version));
    OffsetCommit on CLIENT, forwarded: false
        => |r, cx| handlers::offset_commit::handle(cx.broker, r);
    OffsetFetch on CLIENT, forwarded: false
        => |r, cx| ready(handlers::offset_fetch::handle(cx.broker, r, cx.version));
    OffsetDelete on CLIENT, forwarded: false
        => |r, cx| ready(handlers::offset_delete::handle(cx.broker, r).await);
    ListGroups on CLIENT, forwarded: false
        => |r, cx| ready(handlers::list_groups::handle(cx.broker, r));
    DescribeGroups on CLIENT, forwarded: false
        => |r, cx| ready(handlers::describe_groups::handle(cx.broker, r, cx.version));
    DeleteGroups on CLIENT, forwarded: false
        => |r, cx| ready(handlers::delete_groups::handle(cx.broker, r).await);
    ConsumerGroupHeartbeat on CLIENT, forwarded: false
        => |r, cx| ready(handlers::consumer_group_heartbeat::handle(
            cx.broker, r, cx.version, cx.conn.peer, cx.client_id(),
        ));
    ConsumerGroupDescribe on CLIENT, forwarded: false
        => |r, cx| ready(handlers::consumer_group_describe::handle(cx.broker, r));
    DescribeLogDirs on CLIENT, forwarded: false
        => |r, cx| ready(handlers::describe_log_dirs::handle(cx.broker, r, cx.version));
    DescribeTopicPartitions on CLIENT, forwarded: false
        => |r, cx| ready(handlers::describe_topic_partitions::handle(
            cx.broker, r, cx.conn.listener,
        ));
    ElectLeaders on CLIENT, forwarded: true
        => |r, cx| ready(handlers::elect_leaders::handle(cx.broker, r, cx.version).await);
    AlterPartitionReassignments on CLIENT, forwarded: true
        => |r, cx| ready(handlers::reassignments::alter(cx.broker, r, cx.version).await);
    ListPartitionReassignments on CLIENT, forwarded: true
        => |r, cx| ready(handlers::reassignments::list(cx.broker, r).await);
    DescribeQuorum on ALL, forwarded: true
        => |r, cx| handlers::describe_quorum::handle(cx.broker, r, cx.version);
    Envelope on CONTROLLER, forwarded: false
        => |_r, _cx| controller_only(ApiKey::Envelope)?;
    BrokerRegistration on CONTROLLER, forwarded: false
        => |_r, _cx| controller_only(ApiKey::BrokerRegistration)?;
    BrokerHeartbeat on CONTROLLER, forwarded: false
        => |_r, _cx| controller_only(ApiKey::BrokerHeartbeat)?;
    UnregisterBroker on CONTROLLER, forwarded: false
        => |_r, _cx| controller_only(ApiKey::UnregisterBroker)?;
    AllocateProducerIds on CONTROLLER, forwarded: false
        => |_r, _cx| controller_only(ApiKey::AllocateProducerIds)?;
    AlterPartition on CONTROLLER, forwarded: false
        => |_r, _cx| controller_only(ApiKey::AlterPartition)?;
}

/// The "handler" of an API the controller listener's own loop serves: refused here.
fn controller_only(api: ApiKey) -> Result<Reply, Refused> {
    Err(Refused::ControllerApi { api })
}

/// Starts handling a request that came in on `conn`. Whatever must happen in request order
/// (appends, topic changes) happens before this returns; the returned future only waits.
pub async fn dispatch(
    broker: &Arc<Broker>,
    request: Request,
    conn: Connection,
) -> Result<Reply, Refused> {
    let Request {
        api_key,
        header,
        body,
    } = request;
    let ctx = Ctx {
        broker,
        version: header.request_api_version,
        header: &header,
        conn,
    };
    run(ctx, api_key, body).await
}

/// The route of `api`, whatever listener it is served on.
pub fn route(api: ApiKey) -> Option<&'static Route> {
    ROUTES.iter().find(|r| r.api == api)
}

/// What ApiVersions lists on a listener of `kind`: the routes served there.
pub fn api_versions(kind: ListenerKind) -> Vec<ApiVersion> {
    ROUTES
        .iter()
        .filter(|r| r.listeners.contains(&kind))
        .map(|r| {
            ApiVersion::default()
                .with_api_key(r.api as i16)
                .with_min_version(r.versions.min)
                .with_max_version(r.versions.max)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use bytes::{BufMut, BytesMut};
    use caudal_protocol::kafka_protocol::messages::ResponseKind;
    use caudal_protocol::{decode_request, RequestError, SUPPORTED_APIS};

    use super::*;
    use crate::{BrokerConfig, Server};

    /// The APIs only controller listeners serve.
    const CONTROLLER_APIS: &[ApiKey] = &[
        ApiKey::Envelope,
        ApiKey::BrokerRegistration,
        ApiKey::BrokerHeartbeat,
        ApiKey::UnregisterBroker,
        ApiKey::AllocateProducerIds,
        ApiKey::AlterPartition,
    ];

    #[test]
    fn every_decoded_api_has_exactly_one_route_with_its_range() {
        for &(api, min, max) in SUPPORTED_APIS {
            let routes: Vec<&Route> = ROUTES.iter().filter(|r| r.api == api).collect();
            assert_eq!(routes.len(), 1, "{api:?} should have exactly one route");
            assert_eq!(routes[0].versions, VersionRange { min, max }, "{api:?}");
        }
        assert_eq!(
            ROUTES.len(),
            SUPPORTED_APIS.len(),
            "a route for an API not decoded"
        );
    }

    /// A request frame of `api` at `version` with an empty body: enough for the decoder to say
    /// whether it accepts the pair (the body then fails to decode, or decodes as empty).
    fn frame(api: ApiKey, version: i16) -> bytes::Bytes {
        let mut f = BytesMut::new();
        f.put_i16(api as i16);
        f.put_i16(version);
        f.put_i32(7);
        f.put_i16(-1); // no client id
        f.put_u8(0); // no tagged fields
        f.freeze()
    }

    #[test]
    fn the_decoder_accepts_exactly_the_versions_routed_and_advertised() {
        let advertised: BTreeSet<(i16, i16)> = ListenerKind::ALL
            .iter()
            .flat_map(|&kind| api_versions(kind))
            .flat_map(|a| (a.min_version..=a.max_version).map(move |v| (a.api_key, v)))
            .collect();
        let mut accepted = BTreeSet::new();
        for api in ApiKey::iter() {
            let schema = api.valid_versions();
            for version in schema.min - 1..=schema.max + 1 {
                let routed = route(api).is_some_and(|r| {
                    ListenerKind::ALL
                        .iter()
                        .any(|&kind| r.serves(version, kind))
                });
                let decoded = match decode_request(frame(api, version)) {
                    Ok(_) | Err(RequestError::Malformed { .. }) => true,
                    Err(RequestError::UnknownApi { .. })
                    | Err(RequestError::UnsupportedVersion { .. }) => false,
                    Err(e) => panic!("{api:?} v{version}: {e}"),
                };
                assert_eq!(
                    decoded, routed,
                    "{api:?} v{version}: decoded but not routed, or the reverse"
                );
                if decoded {
                    accepted.insert((api as i16, version));
                }
            }
        }
        assert_eq!(
            accepted, advertised,
            "advertised and decoded (api, version) pairs differ"
        );
    }

    #[test]
    fn api_versions_lists_only_the_routes_of_the_listener_kind() {
        let listed = |kind| -> Vec<ApiKey> {
            let ResponseKind::ApiVersions(r) =
                handlers::api_versions::handle(Default::default(), 3, kind)
            else {
                panic!("not an ApiVersions response")
            };
            r.api_keys
                .iter()
                .map(|a| ApiKey::try_from(a.api_key).expect("a known key"))
                .collect()
        };
        let client = listed(ListenerKind::Client);
        let controller = listed(ListenerKind::Controller);
        for r in ROUTES {
            for (kind, keys) in [
                (ListenerKind::Client, &client),
                (ListenerKind::Controller, &controller),
            ] {
                assert_eq!(
                    keys.contains(&r.api),
                    r.listeners.contains(&kind),
                    "{:?} on a {kind} listener",
                    r.api
                );
            }
        }
        // Client listeners serve every client API; controller listeners ApiVersions (which
        // Kafka serves on every listener), DescribeQuorum (which brokers forward) and what
        // brokers send the controller.
        assert_eq!(client.len(), SUPPORTED_APIS.len() - CONTROLLER_APIS.len());
        let mut expected = vec![ApiKey::ApiVersions, ApiKey::DescribeQuorum];
        expected.extend_from_slice(CONTROLLER_APIS);
        assert_eq!(controller, expected);
        for api in [
            ApiKey::Produce,
            ApiKey::Fetch,
            ApiKey::Metadata,
            ApiKey::CreateTopics,
        ] {
            assert!(
                !controller.contains(&api),
                "{api:?} listed on a controller listener"
            );
        }
    }

    #[test]
    fn an_api_versions_of_unknown_version_lists_the_listeners_apis() {
        let Err(e) = decode_request(frame(ApiKey::ApiVersions, 99)) else {
            panic!("ApiVersions v99 decoded")
        };
        let answer = e
            .answer_listing(|| api_versions(ListenerKind::Controller))
            .expect("Kafka answers an ApiVersions of unknown version");
        let everything = e.answer().expect("answered");
        assert!(
            answer.len() < everything.len(),
            "a controller listener's fallback lists the client APIs too"
        );
    }

    #[test]
    fn forwarded_routes_are_client_admin_requests() {
        let forwarded: Vec<ApiKey> = ROUTES
            .iter()
            .filter(|r| r.forwarded)
            .map(|r| r.api)
            .collect();
        assert_eq!(
            forwarded,
            vec![
                ApiKey::CreateTopics,
                ApiKey::DeleteTopics,
                ApiKey::CreatePartitions,
                ApiKey::ElectLeaders,
                ApiKey::AlterPartitionReassignments,
                ApiKey::ListPartitionReassignments,
                ApiKey::DescribeQuorum,
            ]
        );
        for r in ROUTES.iter().filter(|r| r.forwarded) {
            assert!(r.listeners.contains(&ListenerKind::Client), "{:?}", r.api);
        }
    }

    fn request(api: ApiKey, version: i16, body: RequestKind) -> Request {
        Request {
            api_key: api,
            header: RequestHeader::default()
                .with_request_api_key(api as i16)
                .with_request_api_version(version)
                .with_correlation_id(1),
            body,
        }
    }

    #[tokio::test]
    async fn dispatch_serves_each_route_on_its_listener_kinds_only() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = BrokerConfig::new(
            "127.0.0.1:0".parse().expect("address"),
            dir.path().to_path_buf(),
        );
        let server = Server::bind(config).await.expect("broker starts");
        let broker = &server.broker;
        let conn = |kind| Connection {
            peer: "127.0.0.1:1".parse().expect("address"),
            listener: 0,
            kind,
        };
        for r in ROUTES {
            for &kind in ListenerKind::ALL {
                let body = sample(r.api).expect("a sample for every route");
                let outcome =
                    dispatch(broker, request(r.api, r.versions.max, body), conn(kind)).await;
                if r.listeners == CONTROLLER {
                    // Served by the controller listener's loop, never by this dispatch.
                    assert_eq!(
                        outcome.err(),
                        if kind == ListenerKind::Controller {
                            Some(Refused::ControllerApi { api: r.api })
                        } else {
                            Some(Refused::NotOnListener { api: r.api, kind })
                        }
                    );
                } else if r.listeners.contains(&kind) {
                    assert!(outcome.is_ok(), "{:?} refused on a {kind} listener", r.api);
                } else {
                    assert_eq!(
                        outcome.err(),
                        Some(Refused::NotOnListener { api: r.api, kind }),
                        "{:?} on a {kind} listener",
                        r.api
                    );
                }
            }
        }
        // A client API on a controller listener, spelled out.
        let produce = request(ApiKey::Produce, 9, RequestKind::Produce(Default::default()));
        assert!(matches!(
            dispatch(broker, produce, conn(ListenerKind::Controller)).await,
            Err(Refused::NotOnListener {
                api: ApiKey::Produce,
                kind: ListenerKind::Controller
            })
        ));
        // An API with no route at all (the decoder keeps these from the wire).
        let handshake = request(
            ApiKey::SaslHandshake,
            1,
            RequestKind::SaslHandshake(Default::default()),
        );
        assert_eq!(
            dispatch(broker, handshake, conn(ListenerKind::Client))
                .await
                .err(),
            Some(Refused::NoRoute {
                api: ApiKey::SaslHandshake
            })
        );
    }
}
