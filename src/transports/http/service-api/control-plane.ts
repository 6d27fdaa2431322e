import { Type } from '@sinclair/typebox';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { ProvisioningError } from '../../../domain/errors.js';
import { ErrorDetails } from '../../../domain/wire.js';
import { formatRights, instanceView, type InstanceService } from '../../../services/instances.js';
import type { ServiceAuth } from '../../../services/service-auth.js';
import { addServiceAuthHooks, callerOf } from './plugin.js';
import '../route-docs.js';

/**
 * The control plane of an instance (what Azure keeps in ARM): settings, access policies, linked hubs, and — for the
 * operator instance only — other instances. Every route needs ServiceConfig.
 */
const NameParams = Type.Object({ name: Type.String() });
const ApiVersionQuery = Type.Object({ 'api-version': Type.String() });
const Rights = Type.String({ description: 'Comma-separated: ServiceConfig, EnrollmentRead, EnrollmentWrite, RegistrationStatusRead, RegistrationStatusWrite, DeviceConnect.' });
const Policy = Type.Object({ keyName: Type.String(), rights: Rights });
const Caller = Type.Object({ keyName: Type.String(), rights: Rights, instance: Type.Object({ name: Type.String(), idScope: Type.String() }) });
const PolicyWithKeys = Type.Object({ keyName: Type.String(), rights: Rights, primaryKey: Type.String(), secondaryKey: Type.String() });
const PolicyInput = Type.Object({
  rights: Type.Union([Rights, Type.Array(Type.String())]),
  primaryKey: Type.Optional(Type.String()),
  secondaryKey: Type.Optional(Type.String()),
});
const LinkedHub = Type.Object({
  name: Type.String({ description: 'Hub host name.' }),
  builtIn: Type.Boolean(),
  connectionString: Type.Optional(Type.String({ description: 'External hubs only; the key is shown as ****.' })),
  allocationWeight: Type.Integer({ minimum: 1, maximum: 1000 }),
  applyAllocationPolicy: Type.Boolean(),
  location: Type.Optional(Type.String()),
});
const HubPolicyWithKeys = Type.Object({
  keyName: Type.String(),
  rights: Type.String({ description: 'Comma-separated IoT Hub rights: RegistryRead, RegistryWrite, ServiceConnect, DeviceConnect.' }),
  primaryKey: Type.String(),
  secondaryKey: Type.String(),
  connectionString: Type.String({ description: 'HostName=<hub>;SharedAccessKeyName=<policy>;SharedAccessKey=<primary key>' }),
});
const LinkedHubInput = Type.Object({
  builtIn: Type.Optional(Type.Boolean({ description: 'Host the hub inside provisiond.' })),
  connectionString: Type.Optional(Type.String({ description: 'External hub: HostName=…;SharedAccessKeyName=…;SharedAccessKey=…' })),
  allocationWeight: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })),
  applyAllocationPolicy: Type.Optional(Type.Boolean()),
  location: Type.Optional(Type.String({ maxLength: 64 })),
});
const Instance = Type.Object({
  name: Type.String(),
  idScope: Type.String(),
  serviceHostNames: Type.Array(Type.String()),
  allocationPolicy: Type.String(),
  createdDateTimeUtc: Type.String(),
  auditRetentionDays: Type.Integer(),
  eventWebhookUrl: Type.Union([Type.String(), Type.Null()]),
});
const InstancePatch = Type.Object({
  auditRetentionDays: Type.Optional(Type.Integer({ minimum: 1, maximum: 3650, description: 'How long the system log keeps events.' })),
  eventWebhook: Type.Optional(
    Type.Union([
      Type.Object({ url: Type.String({ maxLength: 2048 }), secret: Type.String({ minLength: 16, maxLength: 256, description: 'Signs every delivery; never shown again.' }) }),
      Type.Null(),
    ]),
  ),
  allocationPolicy: Type.Optional(Type.String({ enum: ['hashed', 'geoLatency', 'static'] })),
  serviceHostNames: Type.Optional(Type.Array(Type.String(), { minItems: 1, maxItems: 16 })),
});
const InstanceInput = Type.Object({
  serviceHostNames: Type.Array(Type.String(), { minItems: 1, maxItems: 16 }),
  allocationPolicy: Type.Optional(Type.String({ enum: ['hashed', 'geoLatency', 'static'] })),
});
const errors = {
  400: { description: 'Invalid request', schema: ErrorDetails },
  401: { description: 'Unauthorized', schema: ErrorDetails },
  404: { description: 'Not found', schema: ErrorDetails },
};
const tag = 'Instance configuration';
const name = (request: FastifyRequest): string => (request.params as { name: string }).name;
const body = (request: FastifyRequest): Record<string, unknown> => (request.body ?? {}) as Record<string, unknown>;

export function controlPlanePlugin(deps: { auth: ServiceAuth; instances: InstanceService }) {
  const { instances } = deps;
  return async function register(app: FastifyInstance): Promise<void> {
    addServiceAuthHooks(app, deps.auth);
    const common = { right: 'ServiceConfig' as const, tag };

    app.get('/instance', {
      schema: { querystring: ApiVersionQuery },
      config: { ...common, operationId: 'Instance_Get', summary: 'This instance: name, ID scope, host names, default allocation policy.', responses: { 200: { description: 'Instance', schema: Instance }, ...errors } },
      handler: async (request) => instanceView(callerOf(request).instance),
    });
    app.patch('/instance', {
      schema: { querystring: ApiVersionQuery, body: InstancePatch },
      config: { ...common, operationId: 'Instance_Update', summary: 'Change the default allocation policy, the service host names, the audit retention or the lifecycle-event webhook (null removes it).', responses: { 200: { description: 'Instance', schema: Instance }, ...errors } },
      handler: async (request) => instances.update(callerOf(request).instance, body(request)),
    });

    app.get('/caller', {
      schema: { querystring: ApiVersionQuery },
      config: {
        sas: true,
        operationId: 'Caller_Get',
        tag,
        summary: 'The calling policy: its name and rights, and its instance (any valid policy; clients such as the portal use it to show only what is allowed).',
        responses: { 200: { description: 'The caller', schema: Caller }, ...errors },
      },
      handler: async (request) => {
        const { policy, instance } = callerOf(request);
        return { keyName: policy.keyName, rights: formatRights(policy.rights), instance: { name: instance.name, idScope: instance.idScope } };
      },
    });

    app.get('/accessPolicies', {
      schema: { querystring: ApiVersionQuery },
      config: { ...common, operationId: 'AccessPolicy_List', summary: 'Policies and their rights (no keys).', responses: { 200: { description: 'Policies', schema: Type.Array(Policy) }, ...errors } },
      handler: async (request) => instances.listPolicies(callerOf(request).instance),
    });
    app.put('/accessPolicies/:name', {
      schema: { params: NameParams, querystring: ApiVersionQuery, body: PolicyInput },
      config: { ...common, operationId: 'AccessPolicy_CreateOrUpdate', summary: 'Create or update a policy; keys are generated when omitted and kept on update.', responses: { 200: { description: 'Policy with keys', schema: PolicyWithKeys }, ...errors } },
      handler: async (request) => instances.putPolicy(callerOf(request).instance, name(request), body(request)),
    });
    app.post('/accessPolicies/:name/listKeys', {
      schema: { params: NameParams, querystring: ApiVersionQuery },
      config: { ...common, operationId: 'AccessPolicy_ListKeys', summary: "A policy's keys.", responses: { 200: { description: 'Policy with keys', schema: PolicyWithKeys }, ...errors } },
      handler: async (request) => instances.policyKeys(callerOf(request).instance, name(request)),
    });
    app.post('/accessPolicies/:name/regenerateKey', {
      schema: { params: NameParams, querystring: ApiVersionQuery, body: Type.Object({ keyType: Type.String({ enum: ['primary', 'secondary'] }) }) },
      config: { ...common, operationId: 'AccessPolicy_RegenerateKey', summary: 'Replace the primary or secondary key.', responses: { 200: { description: 'Policy with keys', schema: PolicyWithKeys }, ...errors } },
      handler: async (request) => instances.regenerateKey(callerOf(request).instance, name(request), body(request).keyType),
    });
    app.delete('/accessPolicies/:name', {
      schema: { params: NameParams, querystring: ApiVersionQuery },
      config: { ...common, operationId: 'AccessPolicy_Delete', summary: 'Delete a policy (not the last one with ServiceConfig).', responses: { 204: { description: 'Deleted' }, ...errors } },
      handler: async (request, reply) => {
        await instances.deletePolicy(callerOf(request).instance, name(request));
        return reply.code(204).send();
      },
    });

    app.get('/linkedHubs', {
      schema: { querystring: ApiVersionQuery },
      config: { ...common, operationId: 'LinkedHub_List', summary: 'Linked hubs (connection string keys hidden).', responses: { 200: { description: 'Hubs', schema: Type.Array(LinkedHub) }, ...errors } },
      handler: async (request) => instances.listHubs(callerOf(request).instance),
    });
    app.get('/linkedHubs/:name', {
      schema: { params: NameParams, querystring: ApiVersionQuery },
      config: { ...common, operationId: 'LinkedHub_Get', summary: 'One linked hub.', responses: { 200: { description: 'Hub', schema: LinkedHub }, ...errors } },
      handler: async (request) => instances.getHub(callerOf(request).instance, name(request)),
    });
    app.put('/linkedHubs/:name', {
      schema: { params: NameParams, querystring: ApiVersionQuery, body: LinkedHubInput },
      config: { ...common, operationId: 'LinkedHub_CreateOrUpdate', summary: 'Link a hub (built-in, or external by connection string) or change its allocation settings.', responses: { 200: { description: 'Hub', schema: LinkedHub }, ...errors } },
      handler: async (request) => instances.putHub(callerOf(request).instance, name(request), body(request)),
    });
    app.delete('/linkedHubs/:name', {
      schema: { params: NameParams, querystring: ApiVersionQuery },
      config: { ...common, operationId: 'LinkedHub_Delete', summary: 'Unlink a hub.', responses: { 204: { description: 'Unlinked' }, ...errors } },
      handler: async (request, reply) => {
        await instances.deleteHub(callerOf(request).instance, name(request));
        return reply.code(204).send();
      },
    });

    const operatorOnly = async (request: FastifyRequest) => {
      const operator = await instances.operatorInstance();
      if (callerOf(request).instance.id !== operator.id) {
        throw new ProvisioningError('Unauthorized', 'Unauthorized: only the operator instance manages instances.');
      }
      return operator;
    };
    // A built-in hub may be linked by several instances, so its keys go to the operator only: another tenant could
    // link the hub by name and would otherwise read keys to every device on it.
    app.post('/linkedHubs/:name/listKeys', {
      schema: { params: NameParams, querystring: ApiVersionQuery },
      config: {
        ...common,
        operationId: 'LinkedHub_ListKeys',
        summary: "A built-in hub's shared access policies with their keys: iothubowner, registryRead, registryReadWrite, service, device (operator instance only).",
        responses: { 200: { description: 'Hub policies with keys', schema: Type.Array(HubPolicyWithKeys) }, ...errors },
      },
      handler: async (request) => {
        await operatorOnly(request);
        return instances.builtInHubKeys(callerOf(request).instance, name(request));
      },
    });
    app.get('/instances', {
      schema: { querystring: ApiVersionQuery },
      config: { ...common, operationId: 'Instances_List', summary: 'Every instance of the deployment (operator instance only).', responses: { 200: { description: 'Instances', schema: Type.Array(Instance) }, ...errors } },
      handler: async (request) => {
        await operatorOnly(request);
        return instances.list();
      },
    });
    app.put('/instances/:name', {
      schema: { params: NameParams, querystring: ApiVersionQuery, body: InstanceInput },
      config: { ...common, operationId: 'Instances_Create', summary: 'Create an instance with its own ID scope, host names and owner policy (operator instance only).', responses: { 200: { description: 'Instance and owner policy', schema: Type.Object({ instance: Instance, ownerPolicy: PolicyWithKeys }) }, 409: { description: 'Exists', schema: ErrorDetails }, ...errors } },
      handler: async (request) => {
        await operatorOnly(request);
        const input = body(request) as { serviceHostNames: string[]; allocationPolicy?: 'hashed' | 'geoLatency' | 'static' };
        const { instance, ownerPolicy } = await instances.create({ name: name(request), ...input });
        return { instance: instanceView(instance), ownerPolicy };
      },
    });
    app.delete('/instances/:name', {
      schema: { params: NameParams, querystring: ApiVersionQuery },
      config: { ...common, operationId: 'Instances_Delete', summary: 'Delete an instance and everything in it (operator instance only).', responses: { 204: { description: 'Deleted' }, ...errors } },
      handler: async (request, reply) => {
        const operator = await operatorOnly(request);
        await instances.deleteByName(name(request), operator);
        return reply.code(204).send();
      },
    });
  };
}
