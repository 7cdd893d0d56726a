// The dashboard's router: #/jobs, #/jobs/<id>, #/compare, #/playground, #/models.
// Each page module exports render(main, arg) and may return a cleanup function.

import { errorBox } from "./dom.js";

const PAGES = {
  jobs: () => import("./jobs.js"),
  job: () => import("./job.js"),
  compare: () => import("./compare.js"),
  playground: () => import("./playground.js"),
  models: () => import("./models.js"),
};
let cleanup = null;

async function route() {
  const [, name = "jobs", arg] = location.hash.replace(/^#/, "").split("/");
  const page = name === "jobs" && arg ? "job" : PAGES[name] ? name : "jobs";
  for (const a of document.querySelectorAll("header nav a")) {
    const current = a.getAttribute("href") === `#/${page === "job" ? "jobs" : page}`;
    if (current) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (cleanup) cleanup();
  cleanup = null;
  const main = document.getElementById("main");
  main.replaceChildren();
  try {
    const module = await PAGES[page]();
    cleanup = (await module.render(main, arg && decodeURIComponent(arg))) || null;
  } catch (error) {
    main.append(errorBox(error));
  }
}

window.addEventListener("hashchange", route);
route();
