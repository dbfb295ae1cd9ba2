// A browser's view of the edge: @connectrpc/connect-web's grpc-web transport (the same
// code a web app bundles), with ES code generated from proto/ by protoc-gen-es.
// Usage: EDGE_URL=http://127.0.0.1:8080 TOKEN=... node grpc_web_client.mjs
// Prints one JSON object describing what each call returned.
import { createClient, ConnectError, Code } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { LeadService } from "./gen/aida/leads/v1/leads_pb.js";
import { BadRequestSchema } from "./gen/google/rpc/error_details_pb.js";

const baseUrl = process.env.EDGE_URL;
const token = process.env.TOKEN;

const withToken = (next) => async (request) => {
  request.header.set("authorization", `Bearer ${token}`);
  return next(request);
};
const authed = createClient(
  LeadService,
  createGrpcWebTransport({ baseUrl, useBinaryFormat: true, interceptors: [withToken] }),
);
const anonymous = createClient(
  LeadService,
  createGrpcWebTransport({ baseUrl, useBinaryFormat: true }),
);

const failure = async (call) => {
  try {
    await call();
    return { code: "OK" };
  } catch (error) {
    const connectError = ConnectError.from(error);
    const fields = connectError
      .findDetails(BadRequestSchema)
      .flatMap((detail) => detail.fieldViolations.map((violation) => violation.field));
    return { code: Code[connectError.code], message: connectError.rawMessage, fields };
  }
};

const captured = await authed.captureLead({
  lead: { email: "browser@example.com", firstName: "Grace", company: "Hopper Labs" },
});
const fetched = await authed.getLead({ id: captured.id });
const invalid = await failure(() => authed.captureLead({ lead: { email: "not-an-email" } }));
const unauthenticated = await failure(() => anonymous.getLead({ id: captured.id }));

console.log(
  JSON.stringify({
    captured: { id: captured.id, email: captured.email, status: captured.status },
    fetched: { id: fetched.id, email: fetched.email, company: fetched.company },
    invalid,
    unauthenticated,
  }),
);
