//! The unbuffered TLS stream against tokio-rustls' client over a real socket.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tessera_config::TlsFiles;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream as ClientStream;

use super::{TlsStream, accept};
use crate::tls::{Purpose, server_config};

struct Pair {
    server: TlsStream,
    client: ClientStream<TcpStream>,
    _dir: tempfile::TempDir,
}

async fn pair() -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = server_config(&TlsFiles::default(), dir.path(), Purpose::Mqtt).unwrap();
    let cert = CertificateDer::from_pem_file(dir.path().join("tls/dev-cert.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client_config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connect = async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        TlsConnector::from(Arc::new(client_config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap()
    };
    let serve = async {
        let (tcp, _) = listener.accept().await.unwrap();
        accept(config, tcp).await.unwrap()
    };
    let (client, server) = tokio::join!(connect, serve);
    Pair {
        server,
        client,
        _dir: dir,
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[tokio::test]
async fn a_megabyte_each_way_at_once_through_the_halves_and_a_key_update() {
    let Pair {
        server, mut client, ..
    } = pair().await;
    let (mut read, mut write) = server.split();
    let up = pattern(1 << 20, 7);
    let down = pattern(1 << 20, 9);
    let (up2, down2) = (up.clone(), down.clone());
    // The server echoes nothing: it reads the client's megabyte while writing its own.
    let server_side = tokio::spawn(async move {
        let reader = async {
            let mut got = vec![0; up2.len()];
            read.read_exact(&mut got).await.unwrap();
            assert!(got == up2, "the server read what the client wrote");
            read
        };
        let writer = async {
            for chunk in down2.chunks(1000) {
                write.write_all(chunk).await.unwrap();
            }
            write.flush().await.unwrap();
            write
        };
        tokio::join!(reader, writer)
    });
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let client_writer = async {
        client_write.write_all(&up[..up.len() / 2]).await.unwrap();
        client_write.flush().await.unwrap();
        client_write.write_all(&up[up.len() / 2..]).await.unwrap();
        client_write.flush().await.unwrap();
        client_write
    };
    let client_reader = async {
        let mut got = vec![0; down.len()];
        client_read.read_exact(&mut got).await.unwrap();
        assert!(got == down, "the client read what the server wrote");
        client_read
    };
    let (client_write, client_read) = tokio::join!(client_writer, client_reader);
    let (mut read, mut write) = server_side.await.unwrap();

    // A key update from the client: rustls answers it, and traffic goes on both ways.
    client = client_read.unsplit(client_write);
    client.get_mut().1.refresh_traffic_keys().unwrap();
    client.write_all(b"after the update").await.unwrap();
    client.flush().await.unwrap();
    let mut got = [0; 16];
    read.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"after the update");
    write.write_all(b"answer").await.unwrap();
    write.flush().await.unwrap();
    let mut got = [0; 6];
    client.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"answer");

    // Nothing in flight: the connection holds no buffer.
    let shared = read.0.lock();
    assert_eq!(
        shared.buffered(),
        0,
        "an idle TLS connection holds no buffer"
    );
}

#[tokio::test]
async fn close_notify_is_an_end_of_file_and_a_dropped_socket_an_error() {
    let Pair {
        mut server,
        mut client,
        ..
    } = pair().await;
    client.write_all(b"last words").await.unwrap();
    client.shutdown().await.unwrap();
    let mut all = Vec::new();
    server.read_to_end(&mut all).await.unwrap();
    assert_eq!(all, b"last words");
    // Our close_notify reaches the client as its end of file.
    server.shutdown().await.unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());

    let Pair {
        mut server, client, ..
    } = pair().await;
    // The socket's end of file without a close_notify (a FIN, not a reset).
    let (mut tcp, _) = client.into_inner();
    tcp.shutdown().await.unwrap();
    let e = server.read(&mut [0; 8]).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
}

#[tokio::test]
async fn a_client_that_speaks_no_tls_gets_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = server_config(&TlsFiles::default(), dir.path(), Purpose::Mqtt).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = tokio::spawn(async move {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        // An MQTT CONNECT where a ClientHello belongs.
        tcp.write_all(&[
            0x10, 0x10, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 60, 0, 0, 3,
        ])
        .await
        .unwrap();
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer).await;
        answer
    });
    let (tcp, _) = listener.accept().await.unwrap();
    let e = accept(config, tcp)
        .await
        .err()
        .expect("the handshake fails");
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    drop(e);
    // The client got a TLS alert record (content type 21) before the socket closed.
    let answer = client.await.unwrap();
    assert_eq!(answer.first(), Some(&21), "{answer:?}");
}
