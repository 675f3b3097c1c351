//! Several listeners (Kafka's `listeners` / `advertised.listeners`): each client is told the
//! advertised address of the listener it connected to.

use bytes::{Buf, BufMut, BytesMut};
use caudal_broker::config::Listener;
use caudal_broker::ListenerKind;
use caudal_broker::{BrokerConfig, Server};
use caudal_protocol::kafka_protocol::messages::{
    ApiKey, MetadataRequest, MetadataResponse, RequestHeader,
};
use caudal_protocol::kafka_protocol::protocol::{Decodable, Encodable};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn advertised_broker(addr: std::net::SocketAddr) -> (String, i32) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let version = 12;
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    RequestHeader::default()
        .with_request_api_key(ApiKey::Metadata as i16)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .encode(&mut buf, ApiKey::Metadata.request_header_version(version))
        .unwrap();
    MetadataRequest::default()
        .with_topics(None)
        .encode(&mut buf, version)
        .unwrap();
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    stream.write_all(&buf).await.unwrap();
    let len = stream.read_i32().await.unwrap();
    let mut frame = vec![0u8; len as usize];
    stream.read_exact(&mut frame).await.unwrap();
    let mut frame = bytes::Bytes::from(frame);
    frame.advance(4); // correlation id
    let _tagged = frame.get_u8();
    let r = MetadataResponse::decode(&mut frame, version).unwrap();
    (r.brokers[0].host.as_str().to_string(), r.brokers[0].port)
}

#[tokio::test]
async fn each_listener_advertises_its_own_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = BrokerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().to_path_buf());
    config.listeners = vec![
        Listener {
            name: "EXTERNAL".into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            advertise: ("localhost".into(), 0),
            kind: ListenerKind::Client,
        },
        Listener {
            name: "INTERNAL".into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            advertise: ("caudal".into(), 29092),
            kind: ListenerKind::Client,
        },
    ];
    let server = Server::bind(config).await.unwrap();
    let addrs = server.local_addrs().unwrap();
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    assert_eq!(
        advertised_broker(addrs[0]).await,
        ("localhost".to_string(), i32::from(addrs[0].port())),
        "port 0 is advertised as the port bound"
    );
    assert_eq!(
        advertised_broker(addrs[1]).await,
        ("caudal".to_string(), 29092)
    );
}
