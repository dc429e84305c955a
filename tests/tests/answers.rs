//! Answers beyond JSON through the real host: a redirect that sets a
//! cookie the next request carries back, a file download with its name,
//! and a multipart upload read into its parts.

use e2e::serve_with;

#[test]
fn a_redirect_sets_a_cookie_that_comes_back_and_a_download_names_its_file() {
    let (_data, host) = serve_with(&["ticker"], &[]);
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let redirect = match agent
        .get(&format!("{}/ticker/v1/login", host.base()))
        .call()
    {
        Ok(response) | Err(ureq::Error::Status(_, response)) => response,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(redirect.status(), 303);
    assert_eq!(redirect.header("location"), Some("/ticker/v1/whoami"));
    let cookie = redirect.header("set-cookie").unwrap().to_owned();
    for attribute in [
        "ticker_session=s3cr3t",
        "HttpOnly",
        "SameSite=Lax",
        "Path=/",
        "Max-Age=3600",
    ] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let back = agent
        .get(&format!("{}/ticker/v1/whoami", host.base()))
        .set("cookie", "other=1; ticker_session=s3cr3t")
        .call()
        .unwrap()
        .into_json::<serde_json::Value>()
        .unwrap();
    assert_eq!(back["data"], "s3cr3t");

    let download = agent
        .get(&format!("{}/ticker/v1/report", host.base()))
        .call()
        .unwrap();
    assert_eq!(download.content_type(), "text/csv");
    assert_eq!(
        download.header("content-disposition"),
        Some(
            "attachment; filename=\"tick report _.csv\"; filename*=UTF-8''tick%20report%20%C3%A9.csv"
        )
    );
    assert_eq!(download.into_string().unwrap(), "tick,at\n1,0\n");
}

#[test]
fn a_multipart_upload_is_read_into_its_fields_and_files() {
    let (_data, host) = serve_with(&["ticker"], &[]);
    let boundary = "plughost-upload-4f2a";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nQuarterly\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"q1.txt\"\r\n\
         Content-Type: text/plain\r\n\r\nline one\nline two\r\n--{boundary}--\r\n"
    );
    let reply = ureq::post(&format!("{}/ticker/v1/upload", host.base()))
        .set(
            "content-type",
            &format!("multipart/form-data; boundary={boundary}"),
        )
        .send_string(&body)
        .unwrap()
        .into_json::<serde_json::Value>()
        .unwrap();
    let parts = &reply["data"];
    assert_eq!(parts[0]["name"], "title");
    assert_eq!(parts[0]["text"], "Quarterly");
    assert_eq!(parts[0]["file_name"], serde_json::Value::Null);
    assert_eq!(parts[1]["name"], "file");
    assert_eq!(parts[1]["file_name"], "q1.txt");
    assert_eq!(parts[1]["content_type"], "text/plain");
    assert_eq!(parts[1]["text"], "line one\nline two");

    let json = host.post("/ticker/v1/upload", &serde_json::json!({}));
    json.assert_error(415, "request body must be multipart/form-data");
    let broken = match ureq::post(&format!("{}/ticker/v1/upload", host.base()))
        .set(
            "content-type",
            &format!("multipart/form-data; boundary={boundary}"),
        )
        .send_string("--plughost-upload-4f2a\r\nno headers end")
    {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r.status(),
        Err(e) => panic!("{e}"),
    };
    assert_eq!(broken, 400);
}
