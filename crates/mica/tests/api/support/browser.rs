//! A real browser for the portal's tests: Debian's headless Chromium, driven by ChromeDriver
//! over the W3C WebDriver protocol. The protocol is a handful of JSON requests, spoken here
//! with the tests' own HTTP client: a WebDriver crate would bring a Unicode segmenter and its
//! data into every build of the test binary for the eight commands these tests use.
//!
//! Skipped when Chromium or ChromeDriver is missing, unless `MICA_TEST_REQUIRE_CHROMIUM` is
//! set (as CI does).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The key W3C WebDriver names an element reference with.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long a page may take to show what a test waits for.
const PATIENCE: Duration = Duration::from_secs(30);

pub struct Browser {
    http: reqwest::Client,
    /// `http://127.0.0.1:<port>/session/<id>`.
    session: String,
    driver: Child,
    profile: PathBuf,
}

impl Browser {
    /// Starts ChromeDriver and a headless Chromium with an empty profile; `None` (the test is
    /// skipped) when they are not installed and not required.
    pub async fn start() -> Option<Browser> {
        let chromium = std::env::var("MICA_TEST_CHROMIUM").unwrap_or_else(|_| CHROMIUM.into());
        let driver_bin =
            std::env::var("MICA_TEST_CHROMEDRIVER").unwrap_or_else(|_| CHROMEDRIVER.into());
        if !std::path::Path::new(&chromium).exists() || !std::path::Path::new(&driver_bin).exists()
        {
            assert!(
                std::env::var_os("MICA_TEST_REQUIRE_CHROMIUM").is_none(),
                "Chromium and ChromeDriver are required here (apt-get install chromium chromium-driver)"
            );
            eprintln!("Chromium or ChromeDriver is not installed: browser test skipped");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cmd = Command::new(&driver_bin);
        cmd.arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Its own process group, so the browsers it starts go with it.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let driver = cmd.spawn().expect("starting chromedriver");
        let profile = std::env::temp_dir().join(format!(
            "mica-chromium-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + PATIENCE;
        loop {
            let ready = http.get(format!("{base}/status")).send().await;
            if let Ok(r) = ready {
                let v: Value = r.json().await.unwrap_or_default();
                if v["value"]["ready"] == json!(true) {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1024,1300",
                    format!("--user-data-dir={}", profile.display()),
                ]
            }
        }}});
        let mut browser = Browser {
            http,
            session: String::new(),
            driver,
            profile,
        };
        let v = browser
            .call(
                reqwest::Method::POST,
                &format!("{base}/session"),
                Some(caps),
            )
            .await;
        let id = v["sessionId"].as_str().expect("a WebDriver session");
        browser.session = format!("{base}/session/{id}");
        Some(browser)
    }

    async fn call(&self, method: reqwest::Method, url: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method.clone(), url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = r.status();
        let v: Value = r.json().await.unwrap_or_default();
        assert!(status.is_success(), "{method} {url}: {status} {v}");
        v.get("value").cloned().unwrap_or(v)
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.call(
            reqwest::Method::POST,
            &format!("{}{path}", self.session),
            Some(body),
        )
        .await
    }

    async fn get(&self, path: &str) -> Value {
        self.call(
            reqwest::Method::GET,
            &format!("{}{path}", self.session),
            None,
        )
        .await
    }

    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    /// The address the browser shows.
    pub async fn url(&self) -> String {
        self.get("/url")
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Runs a WebDriver command on the element `css`, finding it again (a page that reloads
    /// itself replaces its elements) until it works.
    async fn on_element(&self, css: &str, action: &str, body: Value) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let found = self
                .http
                .post(format!("{}/element", self.session))
                .json(&json!({"using": "css selector", "value": css}))
                .send()
                .await
                .unwrap();
            if found.status().is_success() {
                let v: Value = found.json().await.unwrap();
                let e = v["value"][ELEMENT].as_str().unwrap().to_owned();
                let done = self
                    .http
                    .post(format!("{}/element/{e}/{action}", self.session))
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                if done.status().is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "could not {action} {css} on {}:\n{}",
                self.url().await,
                self.text().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Types `text` into the field `css`, as a person would.
    pub async fn fill(&self, css: &str, text: &str) {
        self.on_element(css, "clear", json!({})).await;
        self.on_element(css, "value", json!({ "text": text })).await;
    }

    pub async fn click(&self, css: &str) {
        self.on_element(css, "click", json!({})).await;
    }

    /// The text of the page as a person sees it (empty while it is being replaced).
    pub async fn text(&self) -> String {
        let r = self
            .http
            .post(format!("{}/element", self.session))
            .json(&json!({"using": "css selector", "value": "body"}))
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap_or_default();
        let Some(e) = v["value"][ELEMENT].as_str() else {
            return String::new();
        };
        let r = self
            .http
            .get(format!("{}/element/{e}/text", self.session))
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap_or_default();
        v["value"].as_str().unwrap_or_default().to_owned()
    }

    /// Waits until the page no longer reloads itself (no command on its way), so a form
    /// being filled is not replaced under the test's hands.
    pub async fn until_settled(&self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let source = self.get("/source").await;
            if !source
                .as_str()
                .unwrap_or_default()
                .contains("http-equiv=\"refresh\"")
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the page kept following a command:\n{}",
                self.text().await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the page says `needle` (pages that follow a command reload themselves).
    pub async fn until_text(&self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let t = self.text().await;
            if t.contains(needle) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "the page never said {needle:?}; it says:\n{t}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Saves what the browser shows as `<name>.png` in `MICA_TEST_SCREENSHOTS`, when that
    /// folder is set (to look at the pages a test went through).
    pub async fn screenshot(&self, name: &str) {
        let Some(dir) = std::env::var_os("MICA_TEST_SCREENSHOTS") else {
            return;
        };
        use base64::Engine;
        let png = self.get("/screenshot").await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or_default())
            .unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            std::path::Path::new(&dir).join(format!("{name}.png")),
            bytes,
        )
        .unwrap();
    }

    /// The cookies the browser holds for the page it shows.
    pub async fn cookies(&self) -> Vec<Value> {
        self.get("/cookie")
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub async fn quit(mut self) {
        let _ = self.http.delete(&self.session).send().await;
        self.stop();
    }

    fn stop(&mut self) {
        let pid = rustix::process::Pid::from_child(&self.driver);
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.stop();
    }
}
