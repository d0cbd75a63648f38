//! Prints how long the apiserver fixture takes to start: `cargo run -p kitfleet-e2e --example apiserver_start [N]`
//! starts N (default 5) control planes one after the other and prints each time and the medians.
use std::time::Duration;

use kitfleet_e2e::apiserver::Apiserver;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args().nth(1).map_or(Ok(5), |a| a.parse())?;
    let (mut ready, mut with_crds) = (Vec::new(), Vec::new());
    for i in 0..n {
        let api = Apiserver::start()?;
        let t = api.start_times();
        println!(
            "start {}: ready {:?}, with CRDs {:?}",
            i + 1,
            t.ready,
            t.with_crds
        );
        ready.push(t.ready);
        with_crds.push(t.with_crds);
    }
    println!(
        "median of {n}: ready {:?}, with CRDs established {:?}",
        median(ready),
        median(with_crds)
    );
    Ok(())
}
