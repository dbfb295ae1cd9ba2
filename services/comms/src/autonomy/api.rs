//! The gRPC adapter of AutonomyService: requests read and checked, calls of [`Autonomy`]
//! out, its records back as protos.

use super::*;

/// A listing of one key's ledger (its decisions or its transitions): what the request
/// names and how a page of its records answers.
trait LedgerList {
    type Row: aida_core::db::Row;
    type Record: TryFrom<Self::Row, Error = Error>;
    type Response;
    const LEDGER: store::Ledger;
    fn key(&self) -> Result<Key, Error>;
    fn page_size(&self) -> i32;
    fn page_token(&self) -> &str;
    fn id(record: &Self::Record) -> Uuid;
    fn response(records: &[Self::Record], next_page_token: String) -> Self::Response;
}

macro_rules! ledger_lists {
    ($($request:ty => $response:ident { $items:ident: $ledger:expr, $row:ty, $record:ty, $to_proto:path }),* $(,)?) => {$(
        impl LedgerList for $request {
            type Row = $row;
            type Record = $record;
            type Response = pb::$response;
            const LEDGER: store::Ledger = $ledger;
            fn key(&self) -> Result<Key, Error> {
                key(&self.agent, &self.action, &self.segment)
            }
            fn page_size(&self) -> i32 {
                self.page_size
            }
            fn page_token(&self) -> &str {
                &self.page_token
            }
            fn id(record: &$record) -> Uuid {
                record.id
            }
            fn response(records: &[$record], next_page_token: String) -> pb::$response {
                pb::$response {
                    $items: records.iter().map($to_proto).collect(),
                    next_page_token,
                }
            }
        }
    )*};
}

ledger_lists! {
    pb::ListDecisionsRequest => ListDecisionsResponse {
        decisions: store::DECISIONS, store::DecisionRow, DecisionRecord, decision_to_proto
    },
    pb::ListTransitionsRequest => ListTransitionsResponse {
        transitions: store::TRANSITIONS, store::TransitionRow, StoredTransition, transition_to_proto
    },
}

/// A page of one key's ledger, newest first; its page tokens continue only the key they were
/// issued for.
async fn ledger_list<T: LedgerList>(
    autonomy: &Autonomy,
    request: Request<T>,
) -> Result<Response<T::Response>, Status> {
    let context = AuthContext::of(&request)?;
    let list = request.get_ref();
    let key = list.key()?;
    let size = PAGE_SIZES.of(list.page_size())?;
    let paging = query::Paging::new(
        &autonomy.page_tokens,
        size,
        &key_string(&key),
        &store::LEDGER_ORDER,
    );
    let after = paging.resume_key(list.page_token())?;
    let (records, more) = autonomy
        .store
        .ledger_page::<T::Row, T::Record>(
            T::LEDGER,
            &context.tenant_id,
            &key,
            paging.size,
            after.as_deref(),
        )
        .await?;
    let next_page_token =
        paging.next_key(&records, more, |last| vec![KeyValue::Uuid(T::id(last))])?;
    Ok(Response::new(T::response(&records, next_page_token)))
}

fn key_string(key: &Key) -> String {
    format!("{}/{}/{}", key.agent, key.action, key.segment)
}

/// A request that names one key (SignOffPromotion, ReviveAutonomy) and, for those that
/// lower it (DemoteAutonomy, KillAutonomy), the person's reason.
trait KeyRequest {
    fn key(&self) -> [&str; 3];
    fn reason(&self) -> &str {
        ""
    }
}

macro_rules! key_requests {
    ($($request:ty $({ $reason:ident })?),* $(,)?) => {$(
        impl KeyRequest for $request {
            fn key(&self) -> [&str; 3] {
                [&self.agent, &self.action, &self.segment]
            }
            $(fn reason(&self) -> &str {
                &self.$reason
            })?
        }
    )*};
}

key_requests!(
    pb::SignOffPromotionRequest,
    pb::ReviveAutonomyRequest,
    pb::DemoteAutonomyRequest { reason },
    pb::KillAutonomyRequest { reason },
);

impl AutonomyApi {
    /// A person moves the key `request` names (sign-off, revival): see
    /// [`Autonomy::moved_by_person`].
    async fn moved<T: KeyRequest, F>(
        &self,
        request: Request<T>,
        moves: F,
    ) -> Result<Response<pb::Autonomy>, Status>
    where
        F: FnOnce(&mut Grant, &str, DateTime<Utc>) -> Result<Transition, Refused>,
    {
        let context = AuthContext::of(&request)?.clone();
        let [agent, action, segment] = request.get_ref().key();
        let key = key(agent, action, segment)?;
        let record = self.0.moved_by_person(&context, &key, moves).await?;
        Ok(Response::new(self.0.reply(&context, &record).await?))
    }

    /// A person lowers or stops the key `request` names, giving a reason (demotion, kill
    /// switch): see [`Autonomy::lowered_by_person`].
    async fn lowered<T: KeyRequest, F>(
        &self,
        request: Request<T>,
        lowers: F,
    ) -> Result<Response<pb::Autonomy>, Status>
    where
        F: FnOnce(&mut Grant, &str, DateTime<Utc>) -> Result<Option<Transition>, Error>,
    {
        let context = AuthContext::of(&request)?.clone();
        let [agent, action, segment] = request.get_ref().key();
        let reason = request.get_ref().reason();
        let key = key_with_reason(agent, action, segment, reason)?;
        let record = self
            .0
            .lowered_by_person(&context, &key, reason, lowers)
            .await?;
        Ok(Response::new(self.0.reply(&context, &record).await?))
    }
}

#[tonic::async_trait]
impl AutonomyService for AutonomyApi {
    async fn get_autonomy(
        &self,
        request: Request<pb::GetAutonomyRequest>,
    ) -> Result<Response<pb::Autonomy>, Status> {
        let context = AuthContext::of(&request)?;
        let get = request.get_ref();
        let key = key(&get.agent, &get.action, &get.segment)?;
        let record = self
            .0
            .store
            .grant(&context.tenant_id, &key)
            .await?
            .unwrap_or_else(|| GrantRecord::fresh(key, now_micros()));
        Ok(Response::new(self.0.reply(context, &record).await?))
    }

    async fn list_autonomy(
        &self,
        request: Request<pb::ListAutonomyRequest>,
    ) -> Result<Response<pb::ListAutonomyResponse>, Status> {
        let context = AuthContext::of(&request)?;
        let list = request.get_ref();
        let size = PAGE_SIZES.of(list.page_size)?;
        let paging = query::Paging::new(&self.0.page_tokens, size, "", &store::GRANT_ORDER);
        let after = paging.resume_key(&list.page_token)?;
        let (grants, more) = self
            .0
            .store
            .grants(&context.tenant_id, size, after.as_deref())
            .await?;
        let next_page_token = paging.next_key(&grants, more, |last| {
            vec![
                KeyValue::Text(last.key.agent.clone()),
                KeyValue::Text(last.key.action.clone()),
                KeyValue::Text(last.key.segment.clone()),
            ]
        })?;
        let baseline = self.0.baseline(&context.tenant_id).await?;
        Ok(Response::new(pb::ListAutonomyResponse {
            autonomy: grants
                .iter()
                .map(|record| self.0.to_proto(record, &baseline))
                .collect(),
            next_page_token,
        }))
    }

    async fn record_review(
        &self,
        request: Request<pb::RecordReviewRequest>,
    ) -> Result<Response<pb::Decision>, Status> {
        let (context, input) = AuthContext::split(request)?;
        let mut violations = Vec::new();
        let key = check_key(&input.agent, &input.action, &input.segment, &mut violations);
        check_text("subject", &input.subject, 200, true, &mut violations);
        let review = review_from_proto(input.review, &mut violations);
        let review_ms = review_ms(input.review_duration.as_ref(), &mut violations);
        check_text(
            "model_version",
            &input.model_version,
            100,
            true,
            &mut violations,
        );
        check_text(
            "prompt_version",
            &input.prompt_version,
            100,
            true,
            &mut violations,
        );
        check_text("request_id", &input.request_id, 100, false, &mut violations);
        valid(violations)?;
        let review = review.ok_or_else(|| Error::internal("review validated"))?;
        let reviewed = ReviewInput {
            key,
            subject: input.subject.trim().to_owned(),
            review,
            review_ms,
            version: Version {
                model: input.model_version.trim().to_owned(),
                prompt: input.prompt_version.trim().to_owned(),
            },
            sent: input.sent,
            request_id: input.request_id,
        };
        Ok(Response::new(self.0.review(&context, reviewed).await?))
    }

    async fn record_outcome(
        &self,
        request: Request<pb::RecordOutcomeRequest>,
    ) -> Result<Response<pb::Decision>, Status> {
        let (context, input) = AuthContext::split(request)?;
        let mut violations = Vec::new();
        let id = match Uuid::parse_str(&input.decision_id) {
            Ok(id) => Some(id),
            Err(_) => {
                violations.push(FieldViolation::new(
                    "decision_id",
                    if input.decision_id.is_empty() {
                        "required"
                    } else {
                        "not a decision id"
                    },
                ));
                None
            }
        };
        let outcome = match pb::Outcome::try_from(input.outcome) {
            Ok(pb::Outcome::Replied) => Some(BusinessOutcome::Replied),
            Ok(pb::Outcome::Unsubscribed) => Some(BusinessOutcome::Unsubscribed),
            Ok(pb::Outcome::Bounced) => Some(BusinessOutcome::Bounced),
            Ok(pb::Outcome::Unspecified) | Err(_) => {
                violations.push(FieldViolation::new(
                    "outcome",
                    "required: REPLIED, UNSUBSCRIBED or BOUNCED",
                ));
                None
            }
        };
        valid(violations)?;
        let (Some(id), Some(outcome)) = (id, outcome) else {
            return Err(Error::internal("outcome validated").into());
        };
        Ok(Response::new(self.0.outcome(&context, id, outcome).await?))
    }

    async fn list_decisions(
        &self,
        request: Request<pb::ListDecisionsRequest>,
    ) -> Result<Response<pb::ListDecisionsResponse>, Status> {
        ledger_list(&self.0, request).await
    }

    async fn list_transitions(
        &self,
        request: Request<pb::ListTransitionsRequest>,
    ) -> Result<Response<pb::ListTransitionsResponse>, Status> {
        ledger_list(&self.0, request).await
    }

    async fn sign_off_promotion(
        &self,
        request: Request<pb::SignOffPromotionRequest>,
    ) -> Result<Response<pb::Autonomy>, Status> {
        self.moved(request, |grant, by, now| grant.sign_off(by, now))
            .await
    }

    async fn demote_autonomy(
        &self,
        request: Request<pb::DemoteAutonomyRequest>,
    ) -> Result<Response<pb::Autonomy>, Status> {
        self.lowered(request, |grant, by, now| {
            if grant.level == Level::Shadow {
                return Err(Error::FailedPrecondition {
                    reason: "AT_BOTTOM",
                    message: "the key is at L0 already".into(),
                });
            }
            Ok(Some(grant.demote(by, now)))
        })
        .await
    }

    async fn report_incident(
        &self,
        request: Request<pb::ReportIncidentRequest>,
    ) -> Result<Response<pb::Autonomy>, Status> {
        let context = AuthContext::of(&request)?.clone();
        let input = request.get_ref();
        let mut violations = Vec::new();
        let key = check_key(&input.agent, &input.action, &input.segment, &mut violations);
        let incident = match pb::IncidentKind::try_from(input.kind) {
            Ok(pb::IncidentKind::Critical) => Some(Incident::Critical),
            Ok(pb::IncidentKind::ThresholdBreach) => Some(Incident::ThresholdBreach),
            Ok(pb::IncidentKind::Unspecified) | Err(_) => {
                violations.push(FieldViolation::new(
                    "kind",
                    "required: CRITICAL or THRESHOLD_BREACH",
                ));
                None
            }
        };
        check_text(
            "description",
            &input.description,
            1000,
            true,
            &mut violations,
        );
        valid(violations)?;
        let incident = incident.ok_or_else(|| Error::internal("kind validated"))?;
        let record = self
            .0
            .incident(&context, &key, incident, input.description.trim())
            .await?;
        Ok(Response::new(self.0.reply(&context, &record).await?))
    }

    async fn kill_autonomy(
        &self,
        request: Request<pb::KillAutonomyRequest>,
    ) -> Result<Response<pb::Autonomy>, Status> {
        self.lowered(request, |grant, by, now| {
            Ok((!grant.killed).then(|| grant.kill(by, now)))
        })
        .await
    }

    async fn revive_autonomy(
        &self,
        request: Request<pb::ReviveAutonomyRequest>,
    ) -> Result<Response<pb::Autonomy>, Status> {
        self.moved(request, |grant, by, now| grant.revive(by, now))
            .await
    }
}
