// slmtune console: a client of the public /v1 API, nothing more. No framework, no build step: ES modules
// served as they are. Every text that comes from the server or the user goes into the page through textContent
// (dom.js h() never parses HTML), so a dataset holding "<script>" shows as those characters. The API key lives in
// sessionStorage and travels only in the Authorization header.

import { start } from "./router.js";

start();  // module scripts run after the document is parsed
