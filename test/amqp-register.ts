import { once } from 'node:events';
import rhea, { type AmqpError, type Connection, type Message } from 'rhea';
import type { Json } from './devices.js';

/**
 * Register and poll over an AMQP connection that has just opened, as the device SDK's AMQP transport does
 * (dps-wire.md §6): a receiver and a sender on the registration address, the register message with `body`, then
 * `iotdps-get-operationstatus` every `pollMs` until the operation leaves `assigning`. Resolves with the final body, or
 * rejects with a rejection's AMQP error; closes the connection either way. How the connection authenticated (SASL
 * PLAIN, TPM, a TLS client certificate) is the caller's.
 */
export async function registerOverAmqp(connection: Connection, address: string, body: Json, pollMs: number): Promise<Json> {
  try {
    const replies: Message[] = [];
    const receiver = connection.open_receiver({ source: { address } });
    receiver.on('message', (context) => replies.push(context.message as Message));
    const sender = connection.open_sender({ target: { address } });
    await once(sender, 'sendable');
    let next = 0;
    const send = (properties: Record<string, unknown>, content: unknown): Promise<Json> => {
      next += 1;
      const correlationId = `register-${next}`;
      return new Promise((resolve, reject) => {
        const delivery = sender.send({ correlation_id: correlationId, application_properties: properties, body: content });
        const wait = (deadline: number): void => {
          const reply = replies.find((message) => message.correlation_id === correlationId);
          if (reply !== undefined) resolve(JSON.parse((reply.body as { content: Buffer }).content.toString('utf8')) as Json);
          else if (Date.now() > deadline) reject(new Error('no AMQP reply'));
          else setTimeout(() => wait(deadline), 20);
        };
        sender.on('accepted', (context) => {
          if (context.delivery === delivery) wait(Date.now() + 10_000);
        });
        sender.on('rejected', (context) => {
          if (context.delivery === delivery) reject((context.delivery.remote_state as { error: AmqpError }).error);
        });
      });
    };
    const accepted = await send({ 'iotdps-operation-type': 'iotdps-register', 'iotdps-forceRegistration': false }, rhea.message.data_section(Buffer.from(JSON.stringify(body))));
    let state = accepted;
    for (let attempt = 0; attempt < 50 && state.status === 'assigning'; attempt += 1) {
      await new Promise((resolve) => setTimeout(resolve, pollMs));
      state = await send({ 'iotdps-operation-type': 'iotdps-get-operationstatus', 'iotdps-operation-id': accepted.operationId }, '');
    }
    return state;
  } finally {
    connection.close();
  }
}
