//! Compiles the CSI v1 subset and the kubelet's plugin-registration API at build time, with `protox` (a protobuf
//! compiler in Rust, so no `protoc` is needed) feeding its descriptors to tonic's code generator.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/csi.proto", "proto/pluginregistration.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
