import { readFile, stat } from 'node:fs/promises';
import { extname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';

/**
 * The portal: the built React app (web/dist) served under /portal on the HTTPS listener. It is a pure client of the
 * service API on the same origin and has no routes of its own beyond its files. Paths that are not files get
 * index.html, so the app's own routes survive a reload. Without a build, /portal says how to make one.
 */
export const DEFAULT_PORTAL_DIR = fileURLToPath(new URL('../../../web/dist/', import.meta.url));

const CONTENT_TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.json': 'application/json; charset=utf-8',
  '.woff2': 'font/woff2',
  '.txt': 'text/plain; charset=utf-8',
};

/**
 * Everything the app loads comes from this origin; the browser refuses anything else, so a dependency that tried to
 * fetch a font or script from the network would fail visibly in tests rather than leak requests.
 */
const SECURITY_HEADERS: Record<string, string> = {
  'content-security-policy':
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
};

const NOT_BUILT = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>provisiond portal not built</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto; line-height: 1.5">
<h1>The portal is not built</h1>
<p>This server has no portal files. Build them with <code>npm run build:web</code> (<code>npm start</code> does it for
you), then reload this page. The service API works without them.</p>
</body></html>
`;

export interface PortalOptions {
  /** The built app; defaults to web/dist of this package. */
  dir?: string;
}

export function portalPlugin(options: PortalOptions = {}) {
  const root = resolve(options.dir ?? DEFAULT_PORTAL_DIR);
  return async function register(app: FastifyInstance): Promise<void> {
    const send = async (request: FastifyRequest, reply: FastifyReply, wanted: string) => {
      for (const [name, value] of Object.entries(SECURITY_HEADERS)) reply.header(name, value);
      const file = await findFile(root, wanted);
      if (file !== undefined) {
        // Vite names assets by content hash, so they never change; index.html must always be fresh.
        const immutable = file.startsWith(join(root, 'assets') + sep);
        return reply
          .header('cache-control', immutable ? 'public, max-age=31536000, immutable' : 'no-cache')
          .type(CONTENT_TYPES[extname(file).toLowerCase()] ?? 'application/octet-stream')
          .send(await readFile(file));
      }
      // A missing asset is a 404; any other path is one of the app's routes.
      if (wanted.startsWith('assets/') || /\.[a-z0-9]+$/i.test(wanted)) {
        return reply.code(404).type('text/plain; charset=utf-8').send(`No portal file ${request.url.split('?')[0] ?? ''}.\n`);
      }
      const index = join(root, 'index.html');
      try {
        return reply.header('cache-control', 'no-cache').type(CONTENT_TYPES['.html'] ?? 'text/html').send(await readFile(index));
      } catch {
        return reply.code(503).header('cache-control', 'no-store').type('text/html; charset=utf-8').send(NOT_BUILT);
      }
    };

    app.get('/', async (_request, reply) => reply.redirect('/portal/'));
    // The router ignores trailing slashes, so this one route answers /portal and /portal/.
    app.get('/portal', async (request, reply) => send(request, reply, ''));
    app.get('/portal/*', async (request, reply) => send(request, reply, (request.params as { '*': string })['*']));
  };
}

/** The file under root a request path names, never one outside it; undefined when there is none. */
async function findFile(root: string, wanted: string): Promise<string | undefined> {
  if (wanted === '' || wanted.includes('\0')) return undefined;
  const candidate = resolve(root, wanted);
  const inside = relative(root, candidate);
  if (inside === '' || inside.startsWith('..') || resolve(root, inside) !== candidate) return undefined;
  try {
    return (await stat(candidate)).isFile() ? candidate : undefined;
  } catch {
    return undefined;
  }
}
