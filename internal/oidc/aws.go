package oidc

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ecr"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/aws/smithy-go"
	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/ghcr"
)

// exchangeAWS: STS AssumeRoleWithWebIdentity (unsigned), then ECR
// GetAuthorizationToken with the session; the token is base64 "AWS:<pw>".
// Both clients go through the AWS SDK, which honours AWS_ENDPOINT_URL_STS
// and AWS_ENDPOINT_URL_ECR (read here through c.Getenv, so tests and
// sovereign clouds can point them elsewhere). The SDK's own retries are off:
// internal/retry retries what is transient, visibly.
func exchangeAWS(ctx context.Context, c Config, jwt string, mask func(string)) (string, string, error) {
	region, err := c.awsRegion()
	if err != nil {
		return "", "", err
	}
	endpoint := func(env string) *string {
		if v := c.endpoint(env, ""); v != "" {
			return aws.String(v)
		}
		return nil
	}
	stsClient := sts.New(sts.Options{
		Region:           region,
		BaseEndpoint:     endpoint("AWS_ENDPOINT_URL_STS"),
		Credentials:      aws.AnonymousCredentials{},
		RetryMaxAttempts: 1,
		HTTPClient:       c.client(),
	})
	role, err := stsClient.AssumeRoleWithWebIdentity(ctx, &sts.AssumeRoleWithWebIdentityInput{
		RoleArn:          aws.String(c.AWSRoleARN),
		RoleSessionName:  aws.String("ghcr-pull"),
		WebIdentityToken: aws.String(jwt),
	})
	if err != nil {
		return "", "", classifyAWS(err, "sts:AssumeRoleWithWebIdentity",
			"check the role's trust policy: it must allow sts:AssumeRoleWithWebIdentity for the token.actions.githubusercontent.com provider, with aud sts.amazonaws.com and a sub condition matching this repository")
	}
	if role.Credentials == nil || role.Credentials.AccessKeyId == nil || role.Credentials.SecretAccessKey == nil {
		return "", "", &ExchangeError{Provider: AWSECR, Step: "sts:AssumeRoleWithWebIdentity", Message: "no credentials in the answer"}
	}
	mask(aws.ToString(role.Credentials.SecretAccessKey))
	mask(aws.ToString(role.Credentials.SessionToken))
	ecrClient := ecr.New(ecr.Options{
		Region:       region,
		BaseEndpoint: endpoint("AWS_ENDPOINT_URL_ECR"),
		Credentials: credentials.NewStaticCredentialsProvider(aws.ToString(role.Credentials.AccessKeyId),
			aws.ToString(role.Credentials.SecretAccessKey), aws.ToString(role.Credentials.SessionToken)),
		RetryMaxAttempts: 1,
		HTTPClient:       c.client(),
	})
	auth, err := ecrClient.GetAuthorizationToken(ctx, &ecr.GetAuthorizationTokenInput{})
	if err != nil {
		return "", "", classifyAWS(err, "ecr:GetAuthorizationToken", "give the role ecr:GetAuthorizationToken (and ecr:BatchGetImage, ecr:GetDownloadUrlForLayer on the repository)")
	}
	if len(auth.AuthorizationData) == 0 || auth.AuthorizationData[0].AuthorizationToken == nil {
		return "", "", &ExchangeError{Provider: AWSECR, Step: "ecr:GetAuthorizationToken", Message: "no authorization data in the answer"}
	}
	decoded, err := base64.StdEncoding.DecodeString(aws.ToString(auth.AuthorizationData[0].AuthorizationToken))
	if err != nil {
		return "", "", &ExchangeError{Provider: AWSECR, Step: "ecr:GetAuthorizationToken", Message: "authorization token is not base64"}
	}
	user, password, ok := strings.Cut(string(decoded), ":")
	if !ok || password == "" {
		return "", "", &ExchangeError{Provider: AWSECR, Step: "ecr:GetAuthorizationToken", Message: "authorization token is not user:password"}
	}
	mask(password)
	return user, password, nil
}

// classifyAWS places an SDK error: a 4xx API error is configuration, the
// rest transient. The SDK's messages carry no request body.
func classifyAWS(err error, step, fix string) error {
	var redirect *RedirectError
	if errors.As(err, &redirect) {
		return redirect
	}
	status := 0
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		status = re.HTTPStatusCode()
		if status >= 300 && status < 400 && re.Response != nil && re.Response.Response != nil {
			// The SDK does not follow it either; say why it failed.
			r := re.Response.Response
			loc, _ := r.Location()
			where := &RedirectError{Endpoint: AWSECR + " " + step}
			if r.Request != nil {
				where.Endpoint = endpointOf(r.Request.URL)
			}
			if loc != nil {
				where.Location = endpointOf(loc)
			}
			return where
		}
	}
	msg := err.Error()
	var api smithy.APIError
	if errors.As(err, &api) {
		msg = api.ErrorCode() + ": " + api.ErrorMessage()
	}
	msg = failure.Clip(msg)
	if status >= 400 && status < 500 && status != http.StatusTooManyRequests {
		return &ExchangeError{Provider: AWSECR, Step: step, Status: status, Message: msg, Fix: fix}
	}
	// The SDK's own retries are off, so its throttling delay is too: the
	// answer's Retry-After, when AWS sends one, is what internal/retry waits.
	var after time.Duration
	if re != nil && re.Response != nil && re.Response.Response != nil {
		after = ghcr.ParseRetryAfter(re.Response.Header.Get("Retry-After"), time.Now())
	}
	return &failure.Transient{Response: failure.Response{Status: status, Message: msg, Where: AWSECR + " " + step}, RetryAfter: after}
}
