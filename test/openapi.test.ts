import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import SwaggerParser from '@apidevtools/swagger-parser';
import openapiTS, { astToString } from 'openapi-typescript';
import ts from 'typescript';
import type { Json } from './devices.js';
import { call, startServer, type TestServer } from './harness.js';

/**
 * /openapi.json is a valid OpenAPI 3.1 document: a standard validator (@apidevtools/swagger-parser, which checks the
 * document against the OpenAPI 3.1 schema and its references) accepts it, and a client generator (openapi-typescript)
 * turns it into TypeScript that compiles under strict settings. Client generators are what users point at it.
 */
/** The validator's document type (from openapi-types, which is not a dependency of this project itself). */
type ApiDocument = NonNullable<Parameters<SwaggerParser.ApiCallback>[1]>;

let server: TestServer;
let document: Json;

before(async () => {
  server = await startServer();
  const response = await call('GET', '/openapi.json');
  assert.equal(response.status, 200, response.text);
  document = response.body as Json;
});
after(async () => {
  await server.close();
});

test('the document declares OpenAPI 3.1 and passes the swagger-parser validator', async () => {
  assert.equal(document.openapi, '3.1.0');
  // validate() dereferences in place: give it a copy.
  await SwaggerParser.validate(structuredClone(document) as unknown as ApiDocument);
});

test('the validator is not a formality: it refuses what OpenAPI 3.0 or 3.1 does not allow', async () => {
  // The same document declared as 3.0: its JSON Schema 2020-12 keywords (const, type null) are not OpenAPI 3.0.
  await assert.rejects(SwaggerParser.validate({ ...structuredClone(document), openapi: '3.0.3' } as unknown as ApiDocument));
  // A response without its required description.
  const broken = structuredClone(document) as Json;
  const operation = Object.values(broken.paths as Record<string, Record<string, Json>>)[0]?.[Object.keys(Object.values(broken.paths as Record<string, Json>)[0] ?? {})[0] ?? ''] as Json;
  delete (Object.values(operation.responses as Record<string, Json>)[0] as Json).description;
  await assert.rejects(SwaggerParser.validate(broken as unknown as ApiDocument));
});

test('the document describes every part of the API, each operation once, with its parameters', () => {
  const operationIds: string[] = [];
  for (const [path, item] of Object.entries(document.paths as Record<string, Record<string, Json>>)) {
    const templated = [...path.matchAll(/\{(\w+)\}/g)].map((match) => match[1]);
    for (const [method, operation] of Object.entries(item)) {
      operationIds.push(operation.operationId as string);
      const declared = (operation.parameters as Json[]).filter((parameter) => parameter.in === 'path').map((parameter) => parameter.name as string);
      assert.deepEqual(declared.sort(), [...templated].sort(), `${method} ${path}: path parameters`);
      assert.ok(Object.keys(operation.responses as Json).length > 0, `${method} ${path}: responses`);
    }
  }
  assert.equal(new Set(operationIds).size, operationIds.length, 'operationIds are unique');
  for (const expected of ['IndividualEnrollment_CreateOrUpdate', 'RuntimeRegistration_RegisterDevice', 'HubDevices_GetIdentity', 'DataRequest_Create', 'LinkedHub_ListKeys']) {
    assert.ok(operationIds.includes(expected), expected);
  }
});

test('openapi-typescript generates types from it that compile under strict TypeScript', async () => {
  const generated = astToString(await openapiTS(structuredClone(document) as never));
  assert.match(generated, /export interface paths \{/);
  assert.match(generated, /"\/enrollments\/\{id\}": \{/);
  assert.match(generated, /IndividualEnrollment_CreateOrUpdate/);
  const directory = mkdtempSync(join(tmpdir(), 'provisiond-openapi-'));
  try {
    const typesFile = join(directory, 'provisiond-api.ts');
    writeFileSync(typesFile, generated);
    // A client's use of the generated types: an enrollment body and an error body are typed.
    const useFile = join(directory, 'use.ts');
    writeFileSync(
      useFile,
      [
        "import type { operations } from './provisiond-api.js';",
        "type Put = operations['IndividualEnrollment_CreateOrUpdate'];",
        "export const body: Put['requestBody']['content']['application/json'] = { registrationId: 'dev-1', attestation: { type: 'symmetricKey' } };",
        "export type Answer = Put['responses'][200]['content']['application/json'];",
        '',
      ].join('\n'),
    );
    const program = ts.createProgram([typesFile, useFile], {
      strict: true,
      noEmit: true,
      target: ts.ScriptTarget.ES2022,
      module: ts.ModuleKind.NodeNext,
      moduleResolution: ts.ModuleResolutionKind.NodeNext,
      skipLibCheck: true,
      types: [],
    });
    const diagnostics = ts.getPreEmitDiagnostics(program).map((diagnostic) => ts.flattenDiagnosticMessageText(diagnostic.messageText, '\n'));
    assert.deepEqual(diagnostics, []);
  } finally {
    rmSync(directory, { recursive: true, force: true });
  }
});
