// Copies the console's third-party browser assets from node_modules into the Python package
// (src/tuneforge/serve/console/static/vendor), with their licences and a manifest of versions and hashes.
// Run by `make console`; the copied files are committed, so installing or serving tuneforge needs no Node.
import { createHash } from "node:crypto";
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "src", "tuneforge", "serve", "console", "static", "vendor");
const FILES = {
  uplot: ["dist/uPlot.iife.min.js", "dist/uPlot.min.css", "LICENSE"],
  "swagger-ui-dist": ["swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png", "LICENSE"],
  redoc: ["bundles/redoc.standalone.js", "LICENSE"],
};

// ReDoc's sidebar shows its maker's logo from cdn.redoc.ly, the one request its bundle makes to another origin:
// the vendored copy shows a small icon of ours from the package instead.
const PATCHES = {
  "redoc.standalone.js": [["https://cdn.redoc.ly/redoc/logo-mini.svg", "/console/docs-logo.svg"]],
};

mkdirSync(out, { recursive: true });
const manifest = {};
for (const [pkg, files] of Object.entries(FILES)) {
  const root = join(here, "node_modules", pkg);
  const version = JSON.parse(readFileSync(join(root, "package.json"), "utf8")).version;
  manifest[pkg] = { version, files: {} };
  for (const f of files) {
    const name = f === "LICENSE" ? `${pkg}.LICENSE.txt` : f.split("/").pop();
    if (PATCHES[name]) {
      let text = readFileSync(join(root, f), "utf8");
      for (const [from, to] of PATCHES[name]) {
        if (!text.includes(from)) throw new Error(`${name}: ${from} not found; check the patch for this version`);
        text = text.split(from).join(to);
      }
      writeFileSync(join(out, name), text);
    } else {
      copyFileSync(join(root, f), join(out, name));
    }
    manifest[pkg].files[name] = createHash("sha256").update(readFileSync(join(out, name))).digest("hex");
  }
}
writeFileSync(join(out, "VERSIONS.json"), JSON.stringify(manifest, null, 1) + "\n");
console.log(`vendored into ${out}:`, Object.entries(manifest).map(([p, m]) => `${p}@${m.version}`).join(", "));
