import type { FastifyInstance } from 'fastify';
import type { HubRequest, HubResponse, HubTransport } from '../../hubs/registry-client.js';

/**
 * Requests to a hub this process hosts, run through the HTTPS app's own routes in-process (Fastify inject): the same
 * registry REST API, authentication and validation as over the network, without a loopback TLS socket.
 */
export class InjectTransport implements HubTransport {
  readonly #app: FastifyInstance;

  constructor(app: FastifyInstance) {
    this.#app = app;
  }

  async send(request: HubRequest): Promise<HubResponse> {
    const response = await this.#app.inject({
      method: request.method as 'GET',
      url: request.path,
      headers: request.headers,
      ...(request.body === undefined ? {} : { payload: request.body }),
    });
    return { status: response.statusCode, text: response.body };
  }
}
