import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { test } from 'node:test';
import Fastify, { type FastifyBaseLogger } from 'fastify';
import pino from 'pino';
import { RequestLogger } from '../src/transports/http/request-logger.js';

/** A pino logger at `level` whose records land in the returned array, and how many children it made. */
function capturing(level: string): { logger: FastifyBaseLogger; records: Record<string, unknown>[]; children: () => number } {
  const records: Record<string, unknown>[] = [];
  const out = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString().split('\n')) if (line !== '') records.push(JSON.parse(line) as Record<string, unknown>);
      done();
    },
  });
  const logger = pino({ level }, out);
  let made = 0;
  const child = logger.child;
  logger.child = function (this: typeof logger, bindings, options) {
    made += 1;
    return child.call(this, bindings, options);
  } as typeof logger.child;
  return { logger, records, children: () => made };
}

test('request.log: no child logger while nothing is logged; a record that is logged carries the request ID', async () => {
  const { logger, records, children } = capturing('warn');
  const app = Fastify({ loggerInstance: logger, childLoggerFactory: RequestLogger.factory, genReqId: () => 'req-1' });
  app.get('/quiet', async (request) => {
    request.log.info({ detail: 1 }, 'below the level');
    request.log.debug('below the level');
    return { ok: true };
  });
  app.get('/loud', async (request) => {
    request.log.warn({ detail: 2 }, 'at the level');
    request.log.error('above the level');
    return { ok: true };
  });
  try {
    await app.ready();
    const before = children();
    assert.equal((await app.inject({ method: 'GET', url: '/quiet' })).statusCode, 200);
    assert.equal(children() - before, 0, 'no child made for calls below the level');
    assert.deepEqual(records, []);
    assert.equal((await app.inject({ method: 'GET', url: '/loud' })).statusCode, 200);
    assert.equal(children() - before, 1, 'one child for the request that logs, however often it logs');
    assert.deepEqual(
      records.map(({ level, reqId, msg, detail }) => ({ level, reqId, msg, detail })),
      [
        { level: 40, reqId: 'req-1', msg: 'at the level', detail: 2 },
        { level: 50, reqId: 'req-1', msg: 'above the level', detail: undefined },
      ],
    );
  } finally {
    await app.close();
  }
});

test("request.log at info: Fastify's request lines and the handler's own, each with the request ID", async () => {
  const { logger, records } = capturing('info');
  const app = Fastify({ loggerInstance: logger, childLoggerFactory: RequestLogger.factory, genReqId: () => 'req-2' });
  app.get('/', async (request) => {
    assert.equal(request.log.level, 'info');
    assert.equal((request.log as unknown as RequestLogger).isLevelEnabled('debug'), false);
    request.log.info('handled');
    request.log.child({ step: 'inner' }).info('nested');
    return { ok: true };
  });
  try {
    assert.equal((await app.inject({ method: 'GET', url: '/' })).statusCode, 200);
    assert.deepEqual(
      records.map(({ reqId, msg, step }) => ({ reqId, msg, step })),
      [
        { reqId: 'req-2', msg: 'incoming request', step: undefined },
        { reqId: 'req-2', msg: 'handled', step: undefined },
        { reqId: 'req-2', msg: 'nested', step: 'inner' },
        { reqId: 'req-2', msg: 'request completed', step: undefined },
      ],
    );
  } finally {
    await app.close();
  }
});
