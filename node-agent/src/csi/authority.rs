//! Which registration-socket paths the kubelet can actually reach.
//!
//! The kubelet's plugin watcher dials the registration socket with grpc-go's passthrough resolver, so the
//! HTTP/2 `:authority` it sends is the socket's path, percent-encoded the way grpc-go encodes authorities
//! (unreserved characters, sub-delimiters and `:[]@` kept, everything else — `/` included — as `%XX`). The h2
//! server under tonic parses `:authority` strictly (`http::uri::Authority`) and resets the stream with
//! `PROTOCOL_ERROR` when a `%` is left in the host part, which every plain path produces
//! (`%2Fvar%2Flib%2F…-reg.sock`): registration then fails with "stream terminated by RST_STREAM with error code:
//! PROTOCOL_ERROR" in the kubelet's log, and the driver is never registered. A path whose file name contains an
//! `@` turns everything before it into userinfo, where percent-escapes are allowed, so the default registration
//! socket is `…/plugins_registry/sandbox.kitfleet.dev@reg.sock`, and `csi` refuses a path the kubelet could not
//! register.

use std::path::Path;

/// `path` as grpc-go puts it in `:authority` when it dials a unix socket by path.
pub fn grpc_go_authority(path: &Path) -> String {
    let mut out = String::new();
    for &b in path.as_os_str().as_encoded_bytes() {
        let keep = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'_'
                    | b'.'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'['
                    | b']'
                    | b'@'
            );
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `Err` (with the reason) when a kubelet dialing `path` would be refused by this plugin's HTTP/2 server.
pub fn check_registration_socket(path: &Path) -> Result<(), String> {
    let authority = grpc_go_authority(path);
    authority
        .parse::<tonic::codegen::http::uri::Authority>()
        .map(|_| ())
        .map_err(|e| {
            format!(
                "the kubelet would send :authority {authority:?}, which the plugin's HTTP/2 server rejects ({e}); \
                 put an '@' in the socket's file name (e.g. sandbox.kitfleet.dev@reg.sock)"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_go_escapes_slashes_and_keeps_at() {
        assert_eq!(
            grpc_go_authority(Path::new("/a_b/c d@e.sock")),
            "%2Fa_b%2Fc%20d@e.sock"
        );
    }

    #[test]
    fn a_plain_path_is_refused_and_an_at_in_the_name_is_accepted() {
        let old = Path::new("/var/lib/kubelet/plugins_registry/sandbox.kitfleet.dev-reg.sock");
        let err = check_registration_socket(old).unwrap_err();
        assert!(err.contains("%2Fvar%2Flib"), "{err}");
        let new = Path::new("/var/lib/kubelet/plugins_registry/sandbox.kitfleet.dev@reg.sock");
        check_registration_socket(new).unwrap();
    }
}
