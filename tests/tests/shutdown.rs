//! SIGTERM lets in-flight requests finish.

use std::time::Duration;

#[test]
fn a_request_in_flight_at_sigterm_finishes_and_the_host_exits_cleanly() {
    let (_data, host) = e2e::serve(&["panicky"]);
    let url = format!("{}/panicky/v1/slow?ms=1500", host.base());
    let in_flight = std::thread::spawn(move || {
        ureq::get(&url)
            .call()
            .map(|r| r.status())
            .map_err(|e| e.to_string())
    });
    std::thread::sleep(Duration::from_millis(400));
    let status = host.stop();
    assert_eq!(
        in_flight.join().unwrap().expect("slow request answered"),
        200
    );
    assert!(status.success(), "exit status {status:?}");
}
